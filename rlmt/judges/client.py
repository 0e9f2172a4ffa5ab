"""The judge client: one interface over an OpenAI-compatible endpoint or a local transformers model.

``judge.complete_many(prompts)`` answers a list of chat prompts:

* every reply goes through the :class:`~rlmt.judges.cache.JudgeCache` first and is committed as
  soon as it arrives, so a rerun after a crash sends only what is missing;
* at most ``concurrency`` requests are in flight (a thread pool: the work is network-bound);
* timeouts, connection errors, HTTP 429, HTTP 5xx and malformed bodies are retried with
  exponential backoff and jitter (a ``Retry-After`` header is honoured); other 4xx errors are not
  retried, since asking again cannot fix a bad request or a bad key;
* a prompt that still fails after ``max_retries`` retries yields a reply with ``error`` set: the
  caller records it as a judge failure, never as a verdict.

The API key is read from the environment variable the config names (``api_key_env``) when a
request is built; it is never stored on the object, in the cache, in logs or in errors.
"""

from __future__ import annotations


import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmt.judges.cache import JudgeCache, cache_key
from rlmt.judges.cost import Usage, price_for

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 425, 429}


class JudgeError(RuntimeError):
    """A judge request that cannot succeed (bad request, bad key, unknown model)."""


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class JudgePrompt:
    """One judge call: chat messages and the reply budget."""

    messages: list[dict]
    max_tokens: int = 1024


@dataclass
class JudgeReply:
    text: str | None
    error: str | None = None
    cached: bool = False
    key: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _BaseJudge:
    """Cache lookup, bounded concurrency, progress and accounting; subclasses do one call."""

    concurrency = 1

    def __init__(self, model: str, cache: JudgeCache, *, temperature: float = 0.0, max_tokens: int | None = None,
                 price: tuple[float, float] | None = None):
        self.model = model
        self.cache = cache
        self.temperature = temperature
        self.max_tokens_override = max_tokens
        self.usage = Usage(price=price)

    def params(self, prompt: JudgePrompt) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens_override or prompt.max_tokens}

    def key(self, prompt: JudgePrompt) -> str:
        return cache_key(self.model, prompt.messages, self.params(prompt))

    def complete_many(self, prompts: list[JudgePrompt], desc: str = "judging") -> list[JudgeReply]:
        """Replies in the order of ``prompts``; cached ones are not sent again."""
        from tqdm.auto import tqdm

        replies: list[JudgeReply | None] = [None] * len(prompts)
        todo: list[int] = []
        for i, prompt in enumerate(prompts):
            key = self.key(prompt)
            hit = self.cache.get(key)
            if hit is not None:
                replies[i] = JudgeReply(hit["text"], cached=True, key=key, prompt_tokens=hit["prompt_tokens"],
                                        completion_tokens=hit["completion_tokens"])
                self.usage.add(cache_hits=1)
            else:
                todo.append(i)

        def work(i: int) -> None:
            replies[i] = self._complete_and_store(prompts[i])

        with tqdm(total=len(todo), desc=desc, disable=not todo, leave=False) as bar:
            if self.concurrency <= 1:
                for i in todo:
                    work(i)
                    bar.update()
            else:
                with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
                    for _ in pool.map(work, todo):
                        bar.update()
        return [r for r in replies if r is not None]

    def _complete_and_store(self, prompt: JudgePrompt) -> JudgeReply:
        key = self.key(prompt)
        try:
            text, p_tok, c_tok = self._complete(prompt)
        except (JudgeError, _Transient) as err:
            self.usage.add(failures=1)
            return JudgeReply(None, error=str(err), key=key)
        self.cache.put(key, self.model, text, p_tok, c_tok)
        self.usage.add(prompt_tokens=p_tok, completion_tokens=c_tok)
        return JudgeReply(text, key=key, prompt_tokens=p_tok, completion_tokens=c_tok)

    def _complete(self, prompt: JudgePrompt) -> tuple[str, int, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Loggable settings (no credentials)."""
        return {"model": self.model, "temperature": self.temperature, "backend": type(self).__name__}


class HTTPJudge(_BaseJudge):
    """An OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, any proxy)."""

    def __init__(self, base_url: str, model: str, cache: JudgeCache, *, api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 6, timeout_s: float = 120.0, temperature: float = 0.0,
                 max_tokens: int | None = None, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 price: tuple[float, float] | None = None):
        super().__init__(model, cache, temperature=temperature, max_tokens=max_tokens, price=price)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._local = threading.local()
        if api_key_env and not os.environ.get(api_key_env):
            log.warning("judge %s: environment variable %s is not set; sending requests without a key",
                        model, api_key_env)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "api_key_env": self.api_key_env,
                "concurrency": self.concurrency, "max_retries": self.max_retries, "timeout_s": self.timeout_s}

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _complete(self, prompt: JudgePrompt) -> tuple[str, int, int]:
        body = {"model": self.model, "messages": prompt.messages, **self.params(prompt)}
        last: _Transient | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.usage.add(retries=1)
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                if last is not None and last.retry_after is not None:
                    delay = max(delay, min(last.retry_after, self.max_backoff_s))
                time.sleep(delay)
            try:
                return self._post(body)
            except _Transient as err:
                last = err
        raise _Transient(f"gave up after {self.max_retries + 1} attempts; last error: {last}")

    def _post(self, body: dict) -> tuple[str, int, int]:
        import requests

        self.usage.add(requests_sent=1)
        try:
            resp = self._session().post(self.url, json=body, headers=self._headers(), timeout=self.timeout_s)
        except (requests.Timeout, requests.ConnectionError) as err:
            raise _Transient(f"{type(err).__name__} after {self.timeout_s}s") from None
        if resp.status_code in RETRY_STATUS or resp.status_code >= 500:
            retry_after = resp.headers.get("Retry-After")
            try:
                hint = float(retry_after) if retry_after else None
            except ValueError:
                hint = None
            raise _Transient(f"HTTP {resp.status_code}: {_error_message(resp)}", hint)
        if resp.status_code >= 400:
            raise JudgeError(f"HTTP {resp.status_code} from {self.url}: {_error_message(resp)}")
        try:
            payload = resp.json()
            text = payload["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise _Transient(f"malformed completion body ({type(err).__name__}: {err})") from None
        usage = payload.get("usage") or {}
        return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _error_message(resp) -> str:
    try:
        return str(resp.json()["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return resp.text[:300]


class LocalJudge(_BaseJudge):
    """A local transformers causal LM as judge (greedy at temperature 0), for offline runs and tests."""

    def __init__(self, model_dir: str | Path, cache: JudgeCache, *, temperature: float = 0.0,
                 max_tokens: int | None = None, device: str = "auto"):
        super().__init__(f"local:{Path(model_dir).name}", cache, temperature=temperature, max_tokens=max_tokens)
        from rlmt.models.loading import load_causal_lm, load_tokenizer

        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.lm = load_causal_lm(model_dir, device=device, dtype="auto")
        self.lm.eval()
        self._lock = threading.Lock()

    def _complete(self, prompt: JudgePrompt) -> tuple[str, int, int]:
        import torch

        ids = self.tokenizer.apply_chat_template(prompt.messages, add_generation_prompt=True, return_tensors="pt",
                                                 return_dict=True)
        input_ids = ids["input_ids"].to(self.lm.device)
        budget = self.max_tokens_override or prompt.max_tokens
        kwargs: dict[str, Any] = {"max_new_tokens": budget, "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature)
        else:
            kwargs.update(do_sample=False)
        with self._lock, torch.no_grad():
            out = self.lm.generate(input_ids=input_ids, attention_mask=ids["attention_mask"].to(self.lm.device),
                                   **kwargs)
        new = out[0, input_ids.shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True), int(input_ids.shape[1]), int(new.shape[0])


def make_judge(spec, cache_path: str | Path | None = None, *, device: str = "auto"):
    """The judge a :class:`rlmt.config.JudgeSpec` describes (a local model when ``local_model`` is set)."""
    cache = JudgeCache(cache_path or spec.cache_path)
    if spec.local_model:
        return LocalJudge(spec.local_model, cache, temperature=spec.temperature, max_tokens=spec.max_tokens,
                          device=device)
    return HTTPJudge(spec.base_url, spec.model, cache, api_key_env=spec.api_key_env, concurrency=spec.concurrency,
                     max_retries=spec.max_retries, timeout_s=spec.timeout_s, temperature=spec.temperature,
                     max_tokens=spec.max_tokens, backoff_s=spec.backoff_s, max_backoff_s=spec.max_backoff_s,
                     price=price_for(spec.model, spec.price_input_per_mtok, spec.price_output_per_mtok))


