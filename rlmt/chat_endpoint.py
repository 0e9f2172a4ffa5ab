"""One OpenAI-compatible chat-completions endpoint, spoken through the ``openai`` SDK.

The endpoint is any server that answers ``POST {base_url}/chat/completions``: OpenAI itself, a
``vllm serve`` on a cluster node, a local server. The judge client (:mod:`rlmt.judges.client`) and
the HTTP generation backend (:mod:`rlmt.generation.openai_backend`) send every request through
:meth:`ChatEndpoint.complete`; caching, concurrency (a thread pool per batch) and accounting are
theirs.

What the SDK (``openai==3.63.0``, ``SyncAPIClient.request``) does here, so nothing of ours does:

- retries connection errors, timeouts, HTTP 408, 409, 429 and 5xx up to ``max_retries`` times
  (and obeys a server's ``x-should-retry``); other 4xx (400, 401, 403, 404, 422 ...) fail at once,
  because asking again cannot fix a bad request or a bad key;
- honours ``Retry-After`` (seconds or an HTTP date) and ``retry-after-ms`` up to 120 s; a server
  that asks for a longer wait is not retried: the call fails and is reported, and a rerun (which
  sends only what is missing) asks again;
- applies ``timeout_s`` to every attempt (connect, read, write, pool) and sends the key as
  ``Authorization: Bearer``.

What it lacks, and the smallest own code that fills each gap:

1. **Configurable backoff.** The SDK's delay between retries is fixed by module constants (0.5 s
   doubling to 8 s, minus up to 25 % jitter). The config's ``backoff_s`` / ``max_backoff_s`` (an
   API under quota wants minutes, the tests milliseconds) need its ``_calculate_retry_timeout``
   overridden (:func:`_client_class`): a ``Retry-After`` hint is still returned as the SDK
   parses it; otherwise the delay is ``min(max_backoff_s, backoff_s * 2**retry) * U(0.5, 1)``.
   The hook is private: the exact pin keeps it, and tests/test_judge_client.py checks both waits.
2. **Retrying a 200 whose body is not a completion** (cut-off JSON, no ``choices``, content not a
   string: overloaded proxies send them). The SDK returns such a body (or raises the JSON error)
   without retrying. :meth:`ChatEndpoint.complete` asks again, after the same backoff, while the
   prompt has used fewer than ``max_retries + 1`` requests. The SDK may retry inside each of
   those calls, so a prompt whose replies alternate between malformed and failing costs at most
   ``2 * max_retries + 1`` requests.
3. **How many requests a call sent.** The SDK does not say; an httpx request hook counts them
   per thread, for the judges' cost accounting (``requests_sent``, ``retries``).
4. **A server without a key.** The SDK refuses to build a request without credentials and would
   otherwise pick up ``OPENAI_API_KEY`` by itself, sending an OpenAI key to whatever server the
   config names. Here the key comes only from the variable the config names (``api_key_env``);
   with none, the ``Authorization`` header is explicitly omitted.
5. **A key echoed in an error body.** The SDK's messages quote the server's error body; some
   proxies quote the header they rejected. Every message here has the key masked.

``AsyncOpenAI`` is not used: the callers fan out on a thread pool, which works the same from a
script, a trainer's reward function or a notebook that already runs an event loop.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """A chat request that failed for good: a non-retryable HTTP error, or retries used up.

    ``requests`` is how many HTTP requests the call sent (for accounting). The message never holds
    the API key.
    """

    def __init__(self, message: str, requests: int):
        super().__init__(message)
        self.requests = requests


@dataclass(frozen=True)
class ChatReply:
    """The first choice of a completion, with the server's token counts (0 when it sent none)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    requests: int  # HTTP requests this reply took (1 unless retried)


def backoff_delay(retry: int, backoff_s: float, max_backoff_s: float) -> float:
    """Seconds to wait before retry number ``retry`` (0-based): exponential, capped, jittered down."""
    return min(max_backoff_s, backoff_s * 2 ** min(retry, 60)) * random.uniform(0.5, 1.0)


@functools.lru_cache(maxsize=None)
def _client_class():
    """``openai.OpenAI`` with the config's backoff instead of the SDK's constants (see gap 1)."""
    import openai

    class BackoffOpenAI(openai.OpenAI):
        # Set on the instance after construction. ``with_options``/``copy`` would build a plain
        # copy without them: ChatEndpoint never calls either.
        backoff_s: float = 1.0
        max_backoff_s: float = 60.0

        def _calculate_retry_timeout(self, remaining_retries, options, response_headers=None) -> float:
            # A hint over the SDK's 120 s limit never gets here: its _should_retry refused to retry.
            hint = self._parse_retry_after_header(response_headers)
            if hint is not None and math.isfinite(hint) and hint > 0:
                return hint
            retry = options.get_max_retries(self.max_retries) - remaining_retries
            return backoff_delay(retry, self.backoff_s, self.max_backoff_s)

    return BackoffOpenAI


class ChatEndpoint:
    """Chat completions from one ``base_url``, retried by the SDK; safe to share between threads."""

    def __init__(self, base_url: str, *, api_key_env: str | None = None, max_retries: int = 6,
                 timeout_s: float = 120.0, backoff_s: float = 1.0, max_backoff_s: float = 60.0):
        import openai

        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._key = (os.environ.get(api_key_env) or None) if api_key_env else None
        # No key: tell the SDK to send no Authorization header (it refuses to send none otherwise).
        self._no_auth = None if self._key else {"Authorization": openai.Omit()}
        self._local = threading.local()
        http_client = openai.DefaultHttpxClient(event_hooks={"request": [self._count_request]})
        self._client = _client_class()(api_key=self._key or "no-key-configured", base_url=self.base_url,
                                       max_retries=self.max_retries, timeout=self.timeout_s,
                                       http_client=http_client)
        self._client.backoff_s = self.backoff_s
        self._client.max_backoff_s = self.max_backoff_s

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def _count_request(self, request: Any) -> None:
        # httpx runs request hooks in the thread that sends, so a thread-local counts one call's requests.
        self._local.sent = getattr(self._local, "sent", 0) + 1

    def complete(self, model: str, messages: list[dict], **params: Any) -> ChatReply:
        """The first choice for ``messages``; ``params`` are chat-completion parameters
        (``temperature``, ``max_tokens``, ``seed``, ``stop`` ..., non-standard ones in ``extra_body``).

        Raises :class:`EndpointError` when the request cannot succeed or its retries are used up.
        """
        import openai

        self._local.sent = 0
        while True:
            try:
                completion = self._client.chat.completions.create(model=model, messages=messages,
                                                                  extra_headers=self._no_auth, **params)
            except openai.APIStatusError as err:
                raise self._failure(f"HTTP {err.status_code}: {_status_detail(err)}") from None
            except openai.APITimeoutError:
                raise self._failure(f"timed out after {self.timeout_s:g} s") from None
            except openai.APIConnectionError as err:
                raise self._failure(f"connection failed ({type(err.__cause__ or err).__name__})") from None
            except (json.JSONDecodeError, openai.APIResponseValidationError) as err:
                problem = f"the body is not a completion ({type(err).__name__}: {err})"
            else:
                reply = _first_choice(completion, self._local.sent)
                if isinstance(reply, ChatReply):
                    return reply
                problem = reply
            sent = self._local.sent
            if sent >= self.max_retries + 1:
                raise self._failure(f"malformed completion: {problem}")
            delay = backoff_delay(sent - 1, self.backoff_s, self.max_backoff_s)
            log.info("%s: malformed completion, asking again in %.2f s: %s", self.url, delay, self._redact(problem))
            time.sleep(delay)

    def _failure(self, detail: str) -> EndpointError:
        sent = getattr(self._local, "sent", 0)
        message = f"gave up after {sent} attempts: {detail}" if sent > 1 else detail
        return EndpointError(self._redact(message), sent)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def close(self) -> None:
        self._client.close()


def _first_choice(completion: Any, requests: int) -> ChatReply | str:
    """The reply in a parsed completion, or what is wrong with it (the SDK does not validate bodies)."""
    try:
        choice = completion.choices[0]
        text = choice.message.content
    except (AttributeError, IndexError, KeyError, TypeError) as err:
        return f"no choices[0].message.content ({type(err).__name__}: {err})"
    if not isinstance(text, str):
        return f"message.content is {type(text).__name__}, not a string"
    usage = getattr(completion, "usage", None)
    return ChatReply(text=text, finish_reason=getattr(choice, "finish_reason", None),
                     prompt_tokens=_count(getattr(usage, "prompt_tokens", None)),
                     completion_tokens=_count(getattr(usage, "completion_tokens", None)), requests=requests)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _status_detail(err: Any) -> str:
    """The server's error message (OpenAI's ``{"error": {"message": ...}}`` or the raw body), short."""
    body = err.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:300]
    if isinstance(body, str) and body:
        return body[:300]
    try:
        return err.response.text[:300]
    except Exception:  # noqa: BLE001 - a body that cannot be read leaves the status code alone
        return ""
