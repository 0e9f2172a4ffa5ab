"""The judge client: one interface over an OpenAI-compatible endpoint or a local transformers model.

The endpoint is any OpenAI-compatible server (OpenAI, a ``vllm serve`` on a cluster node, a local
server), reached through the ``openai`` SDK (:mod:`rlmt.chat_endpoint`, which says what the SDK
does and what little it lacks). ``judge.complete_many(prompts)`` answers a list of chat prompts:

* every reply goes through the :class:`~rlmt.judges.cache.JudgeCache` first and is committed as
  soon as it arrives, so a rerun after a crash sends only what is missing;
* at most ``concurrency`` requests are in flight (a thread pool: the SDK has no batch call for
  chat completions short of the offline Batch API, and the work is network-bound);
* timeouts, connection errors, HTTP 408/409/429/5xx are retried by the SDK, honouring
  ``Retry-After``, with this config's exponential backoff (``backoff_s`` doubling up to
  ``max_backoff_s``); a 200 whose body is not a completion is asked again; other 4xx errors are
  not retried, since asking again cannot fix a bad request or a bad key;
* a prompt that still fails after ``max_retries`` retries yields a reply with ``error`` set: the
  caller records it as a judge failure, never as a verdict;
* ``usage`` (:class:`~rlmt.judges.cost.Usage`) counts requests sent, retries, cache hits,
  failures and the tokens the server reported (the cost of a run).

The API key is read from the environment variable the config names (``api_key_env``); it is held
only by the in-memory SDK client, never in the cache, in logs, in ``describe()`` or in errors.

Public API (stable: the benchmarks, the planning-traits report and the rubric rewards use it):

* :func:`make_judge(spec, cache_path=None, device="auto") <make_judge>` builds an
  :class:`HTTPJudge` or, with ``spec.local_model``, a :class:`LocalJudge`;
* ``judge.complete_many(prompts: list[JudgePrompt], desc="judging") -> list[JudgeReply]``: one
  reply per prompt, in order; thread-safe, so several callers may share one judge;
* :class:`JudgePrompt` ``(messages, max_tokens=1024)``; :class:`JudgeReply` ``(text, error,
  cached, key, prompt_tokens, completion_tokens)``: ``text`` is None exactly when ``error`` is
  set, ``key`` is the cache key (model + messages + sampling parameters);
* ``judge.key(prompt)`` is that cache key without sending anything; ``judge.usage``,
  ``judge.describe()`` (loggable settings, no credentials) and ``judge.close()``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmt.chat_endpoint import ChatEndpoint, EndpointError
from rlmt.judges.cache import JudgeCache, cache_key
from rlmt.judges.cost import Usage, price_for

log = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """A judge request that cannot succeed (bad request, bad key, unknown model)."""


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
        except (JudgeError, EndpointError) as err:
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

    def close(self) -> None:
        """Release connections (the cache belongs to the caller and stays open)."""


class HTTPJudge(_BaseJudge):
    """An OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, any proxy)."""

    def __init__(self, base_url: str, model: str, cache: JudgeCache, *, api_key_env: str | None = None,
                 concurrency: int = 8, max_retries: int = 6, timeout_s: float = 120.0, temperature: float = 0.0,
                 max_tokens: int | None = None, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 price: tuple[float, float] | None = None):
        super().__init__(model, cache, temperature=temperature, max_tokens=max_tokens, price=price)
        self.endpoint = ChatEndpoint(base_url, api_key_env=api_key_env, max_retries=max_retries, timeout_s=timeout_s,
                                     backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.url = self.endpoint.url
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        if api_key_env and not self.endpoint.has_key:
            log.warning("judge %s: environment variable %s is not set; sending requests without a key",
                        model, api_key_env)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "url": self.url, "api_key_env": self.api_key_env,
                "concurrency": self.concurrency, "max_retries": self.max_retries, "timeout_s": self.timeout_s}

    def _complete(self, prompt: JudgePrompt) -> tuple[str, int, int]:
        try:
            reply = self.endpoint.complete(self.model, prompt.messages, **self.params(prompt))
        except EndpointError as err:
            self.usage.add(requests_sent=err.requests, retries=max(0, err.requests - 1))
            raise
        self.usage.add(requests_sent=reply.requests, retries=reply.requests - 1)
        return reply.text, reply.prompt_tokens, reply.completion_tokens

    def close(self) -> None:
        self.endpoint.close()


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


