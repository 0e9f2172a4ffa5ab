"""Generation through any OpenAI-compatible chat-completions endpoint (API models, a vLLM server).

- **Concurrent:** one request per (prompt, sample) on a thread pool of ``concurrency`` workers.
  Samples are asked one at a time (``n=1``, ``seed + sample``) so that each is cached on its own
  and a rerun after a crash asks only for the samples it lacks.
- **Retried:** timeouts, connection errors, 408/429/5xx and malformed bodies are retried with
  exponential backoff and full jitter (a ``Retry-After`` header is honoured); other HTTP errors
  (400, 401, 404 ...) fail at once, because asking again cannot fix them.
- **Cached:** in SQLite (:mod:`rlmt.generation.cache`) when ``cache_path`` is given.
- **Secret-safe:** the API key is read from the environment variable named by ``api_key_env``
  and sent only in the ``Authorization`` header; it is masked in every error message and never
  written to the cache.

OpenAI-style servers drop the stop string that ended a completion. ``include_stop_str_in_output``
asks servers that support it (vLLM, SGLang) to keep it, as the local backends do; a stop string
that a server ignored altogether is enforced here by cutting the text after it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from rlmt.generation.base import Completion, GenerationError, Generator, Messages, SamplingParams, check_messages, cut_at_stop
from rlmt.generation.cache import CompletionCache, cache_key

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524})


class _Retryable(Exception):
    """A failure worth asking again for (timeout, rate limit, server error, malformed body)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIGenerator(Generator):
    backend = "openai"

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str | None = None, concurrency: int = 16,
                 cache_path: str | Path | None = None, max_retries: int = 6, timeout_s: float = 300.0,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, include_stop_str_in_output: bool = False,
                 extra_body: dict | None = None, progress: bool = True):
        if not base_url:
            raise GenerationError("backend 'openai' needs a base_url (e.g. https://api.openai.com/v1 or http://host:8000/v1)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.model = str(model)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self._key: str | None = None
        if api_key_env:
            self._key = os.environ.get(api_key_env)
            if not self._key:
                raise GenerationError(f"environment variable {api_key_env} is not set; it must hold the API key for {base_url}")
        self.concurrency = concurrency
        self.chunk_size = concurrency * 8
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.include_stop_str_in_output = include_stop_str_in_output
        self.extra_body = dict(extra_body or {})
        self.progress = progress
        self.cache = CompletionCache(cache_path) if cache_path else None
        self._local = threading.local()
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    # ------------------------------------------------------------------ public

    def generate(self, prompts: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        for i, p in enumerate(prompts):
            check_messages(p, f"prompt {i}")
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        todo: list[tuple[int, int, str]] = []
        for i, messages in enumerate(prompts):
            for k in range(params.n):
                key = cache_key(self.model, messages, params, k)
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    results[i][k] = hit
                else:
                    todo.append((i, k, key))
        failures: list[str] = []
        if todo:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(todo))) as pool:
                futures = {pool.submit(self._complete, prompts[i], params, k): (i, k, key) for i, k, key in todo}
                for fut in tqdm(as_completed(futures), total=len(futures), desc="requests", unit="req", leave=False,
                                disable=not self.progress or len(futures) < 2):
                    i, k, key = futures[fut]
                    try:
                        completion = fut.result()
                    except GenerationError as err:
                        failures.append(str(err))
                        continue
                    if self.cache is not None:
                        self.cache.put(key, self.model, completion)
                    results[i][k] = completion
        if failures:
            kept = "cached, so a rerun asks only for the rest" if self.cache is not None else "not cached (no cache_path)"
            raise GenerationError(f"{len(failures)} of {len(todo)} requests to {self.url} failed; the others were {kept}. "
                                  f"First failure: {failures[0]}")
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ one request

    def _complete(self, messages: Messages, params: SamplingParams, sample: int) -> Completion:
        body = self._body(messages, params, sample)
        last = "no attempt made"
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body, params)
            except _Retryable as err:
                last = self._redact(str(err))
                if attempt == self.max_retries:
                    break
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.5)
                if err.retry_after is not None:
                    delay = max(delay, min(err.retry_after, self.max_backoff_s))
                log.info("retrying %s in %.2fs (attempt %d): %s", self.url, delay, attempt + 1, last)
                time.sleep(delay)
        raise GenerationError(f"gave up after {self.max_retries + 1} attempts: {last}")

    def _body(self, messages: Messages, params: SamplingParams, sample: int) -> dict:
        body = {"model": self.model, "messages": messages, "temperature": params.temperature,
                "top_p": 1.0 if params.greedy else params.top_p, "max_tokens": params.max_new_tokens,
                "seed": params.seed + sample, "n": 1}
        if params.stop:
            body["stop"] = list(params.stop)
            if self.include_stop_str_in_output:
                body["include_stop_str_in_output"] = True
        body.update(self.extra_body)
        return body

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _post(self, body: dict, params: SamplingParams) -> Completion:
        import requests

        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        with self._count_lock:
            self.requests_sent += 1
        try:
            resp = self._session().post(self.url, data=json.dumps(body), headers=headers, timeout=self.timeout_s)
        except (requests.Timeout, requests.ConnectionError) as err:
            raise _Retryable(f"{type(err).__name__}: {err}") from None
        if resp.status_code != 200:
            message = _error_message(resp)
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code}: {message}", _retry_after(resp))
            raise GenerationError(f"{self.url}: HTTP {resp.status_code}: {self._redact(message)}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError(f"message.content is {type(text).__name__}")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Retryable(f"malformed response body ({type(err).__name__}: {err}): {resp.text[:200]!r}") from None
        text, stopped = cut_at_stop(text, params.stop)
        reason = "length" if choice.get("finish_reason") == "length" and not stopped else "stop"
        usage = data.get("usage") or {}
        n_tokens = usage.get("completion_tokens")
        return Completion(text=text, finish_reason=reason, n_tokens=int(n_tokens) if isinstance(n_tokens, int) else 0)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _error_message(resp) -> str:
    try:
        err = resp.json().get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except ValueError:
        pass
    return resp.text[:300]


def _retry_after(resp) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
