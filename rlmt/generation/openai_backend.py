"""Generation through any OpenAI-compatible chat-completions endpoint (API models, a vLLM server).

The endpoint is OpenAI, a ``vllm serve`` on a cluster node or any local server, reached through the
``openai`` SDK (:mod:`rlmt.chat_endpoint`, which says what the SDK does and what little it lacks).

- **Concurrent:** one request per (prompt, sample) on a thread pool of ``concurrency`` workers.
  Samples are asked one at a time (``n=1``, ``seed + sample``) so that each is cached on its own
  and a rerun after a crash asks only for the samples it lacks.
- **Retried:** by the SDK: timeouts, connection errors and HTTP 408/409/429/5xx, honouring
  ``Retry-After``, with this config's exponential backoff (``backoff_s`` doubling up to
  ``max_backoff_s``); a 200 whose body is not a completion is asked again. Other HTTP errors
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

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from rlmt.chat_endpoint import ChatEndpoint, EndpointError
from rlmt.generation.base import Completion, GenerationError, Generator, Messages, SamplingParams, check_messages, cut_at_stop
from rlmt.generation.cache import CompletionCache, cache_key


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
        if api_key_env and not os.environ.get(api_key_env):
            raise GenerationError(f"environment variable {api_key_env} is not set; it must hold the API key for {base_url}")
        self.model = str(model)
        self.endpoint = ChatEndpoint(base_url, api_key_env=api_key_env, max_retries=max_retries, timeout_s=timeout_s,
                                     backoff_s=backoff_s, max_backoff_s=max_backoff_s)
        self.url = self.endpoint.url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.chunk_size = concurrency * 8
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.include_stop_str_in_output = include_stop_str_in_output
        self.extra_body = dict(extra_body or {})
        self.progress = progress
        self.cache = CompletionCache(cache_path) if cache_path else None
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
        self.endpoint.close()
        if self.cache is not None:
            self.cache.close()

    # ------------------------------------------------------------------ one request

    def _complete(self, messages: Messages, params: SamplingParams, sample: int) -> Completion:
        try:
            reply = self.endpoint.complete(self.model, messages, **self._params(params, sample))
        except EndpointError as err:
            self._count(err.requests)
            raise GenerationError(f"{self.url}: {err}") from None
        self._count(reply.requests)
        text, stopped = cut_at_stop(reply.text, params.stop)
        reason = "length" if reply.finish_reason == "length" and not stopped else "stop"
        return Completion(text=text, finish_reason=reason, n_tokens=reply.completion_tokens)

    def _params(self, params: SamplingParams, sample: int) -> dict:
        """Chat-completion parameters of one sample; non-standard ones go in the SDK's ``extra_body``."""
        out: dict = {"temperature": params.temperature, "top_p": 1.0 if params.greedy else params.top_p,
                     "max_tokens": params.max_new_tokens, "seed": params.seed + sample, "n": 1}
        extra: dict = {}
        if params.stop:
            out["stop"] = list(params.stop)
            if self.include_stop_str_in_output:
                extra["include_stop_str_in_output"] = True
        extra.update(self.extra_body)  # the config's extra_body has the last word, as on the wire before
        if extra:
            out["extra_body"] = extra
        return out

    def _count(self, requests: int) -> None:
        with self._count_lock:
            self.requests_sent += requests
