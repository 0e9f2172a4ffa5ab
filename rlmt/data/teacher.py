"""A teacher model behind an OpenAI-compatible chat-completions endpoint, with a SQLite answer cache.

Works with OpenAI, Gemini's OpenAI-compatible endpoint and a vLLM server alike: it only speaks
``POST {base_url}/chat/completions``, through the ``openai`` SDK (:mod:`rlmt.chat_endpoint`, which
says what the SDK does and what little it lacks). The warm-start SFT data (:mod:`rlmt.data.sft_data`)
and the rubric writer (:mod:`rlmt.data.rubrics`) ask through :class:`TeacherClient`.

- **Cached:** every answer is stored under a key made of the endpoint's model, the messages, the
  sampling parameters and the try number (:meth:`TeacherClient.cache_key`) as soon as it arrives,
  so a rerun asks only what is missing and an interrupted run loses at most the requests in flight.
- **Concurrent:** at most ``concurrency`` requests in flight (a thread pool), with a progress bar.
- **Retried:** by the SDK: timeouts, connection errors and HTTP 408/409/429/5xx, honouring
  ``Retry-After``, with the spec's backoff (``backoff_s`` doubling, capped at ``max_backoff_s``:
  60 s for a spec without one); a 200 whose body is not a completion is asked again; other 4xx
  fail at once. ``max_retries`` bounds the HTTP retries of one request; the spec's ``max_tries``
  (asking again when an answer fails the caller's format check) is :func:`ask_until_parsed`'s, not these.
- **Failures are per prompt:** :meth:`TeacherClient.complete_many` returns a :class:`TeacherError`
  for a request that failed for good, which the caller quarantines with its reason; one failure
  never aborts the batch.
- **Asked again when unusable:** :func:`ask_until_parsed` is the one loop both callers use: ask every
  conversation, parse each answer with the caller's check, ask the unusable ones again (the same
  conversation, or one the caller repairs with the reason) up to ``max_tries`` asks in all, and return
  what parsed and why the rest failed, for the caller to quarantine.
- **Secret-safe:** the API key is read only from the environment variable the config names
  (``api_key_env``; never from the config itself, and the SDK's own fallback to ``OPENAI_API_KEY``
  is off); it is held only by the in-memory SDK client, never logged, cached or put in an error
  message. Without it a remote endpoint is refused at once; a local one is asked without a key.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlmt.chat_endpoint import ChatEndpoint, EndpointError
from rlmt.config import TeacherSpec

# The longest wait between two retries when the spec sets none (TeacherSpec has no max_backoff_s).
MAX_BACKOFF_S = 60.0


class TeacherError(RuntimeError):
    """A request that failed for good (after retries, or with a non-retryable status)."""


@dataclass(frozen=True)
class TeacherRequest:
    key: str
    messages: list[dict]


class AnswerCache:
    """SQLite table ``answers(key PRIMARY KEY, text)``; safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
                             "created REAL NOT NULL)")

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT text FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, text: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", (key, text, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class TeacherClient:
    """Chat completions from one endpoint/model, cached and retried.

    ``spec`` is a :class:`~rlmt.config.TeacherSpec` or any spec with its fields (the rubric
    writer's :class:`~rlmt.rewards.rubric.RubricTeacherSpec`). ``requests_sent`` counts the HTTP
    requests sent (retries included) and ``cache_hits`` the answers taken from the cache.
    """

    def __init__(self, spec: TeacherSpec, cache: AnswerCache):
        self.spec = spec
        self.cache = cache
        if spec.api_key_env and not os.environ.get(spec.api_key_env) and not _is_local(spec.base_url):
            raise TeacherError(f"teacher: environment variable {spec.api_key_env} is not set "
                               f"(the API key for {spec.base_url})")
        # A local server (vLLM on this machine) may need no key: without one, no Authorization header is sent.
        self.endpoint = ChatEndpoint(spec.base_url, api_key_env=spec.api_key_env, max_retries=spec.max_retries,
                                     timeout_s=spec.timeout_s, backoff_s=spec.backoff_s,
                                     max_backoff_s=getattr(spec, "max_backoff_s", MAX_BACKOFF_S))
        self.url = self.endpoint.url
        self.requests_sent = 0
        self.cache_hits = 0
        self._count_lock = threading.Lock()

    def cache_key(self, messages: list[dict], attempt: int) -> str:
        blob = json.dumps({"model": self.spec.model, "messages": messages, "temperature": self.spec.temperature,
                           "max_tokens": self.spec.max_tokens, "try": attempt}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def complete_many(self, requests: list[TeacherRequest], desc: str = "teacher") -> dict[str, str | TeacherError]:
        """Answer every request (cache first, then concurrently over HTTP): key -> text or the error."""
        from tqdm import tqdm

        results: dict[str, str | TeacherError] = {}
        todo = []
        for req in requests:
            hit = self.cache.get(req.key)
            if hit is not None:
                results[req.key] = hit
                self.cache_hits += 1
            else:
                todo.append(req)
        if not todo:
            return results
        with ThreadPoolExecutor(max_workers=max(1, self.spec.concurrency)) as pool:
            futures = {pool.submit(self._ask, req.messages): req for req in todo}
            for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, leave=False):
                req = futures[fut]
                try:
                    text = fut.result()
                except TeacherError as err:
                    results[req.key] = err
                    continue
                self.cache.put(req.key, text)
                results[req.key] = text
        return results

    def _ask(self, messages: list[dict]) -> str:
        """One answer; the SDK and :class:`~rlmt.chat_endpoint.ChatEndpoint` do the retrying."""
        try:
            reply = self.endpoint.complete(self.spec.model, messages, temperature=self.spec.temperature,
                                           max_tokens=self.spec.max_tokens)
        except EndpointError as err:  # its message has the key masked
            self._count(err.requests)
            raise TeacherError(f"teacher: {self.url}: {err}") from None
        self._count(reply.requests)
        return reply.text

    def _count(self, requests: int) -> None:
        with self._count_lock:
            self.requests_sent += requests

    def close(self) -> None:
        """Release the endpoint's connections (the cache belongs to the caller and stays open)."""
        self.endpoint.close()


@dataclass(frozen=True)
class Failure:
    """Why one conversation got no usable answer: ``teacher_error`` (``detail``: the request's error) or the
    caller's parse reason for its last answer (``output``: that answer)."""

    reason: str
    detail: str | None = None
    output: str | None = None

    def record(self) -> dict[str, str]:
        """The fields a quarantine row holds about the failure."""
        extra = {"detail": self.detail} if self.detail is not None else {"output": self.output}
        return {"reason": self.reason, **extra}


def ask_until_parsed(spec, cache_path: str | Path, conversations: dict[str, list[dict]],
                     parse: Callable[[str], Any], *, counts: Counter, desc: str, label: str = "try",
                     repair: Callable[[list[dict], str, str], list[dict]] | None = None
                     ) -> tuple[dict[str, Any], dict[str, Failure]]:
    """Ask the teacher (`spec`: a :class:`TeacherSpec` or alike) every conversation until `parse` accepts its answer.

    `parse(answer)` returns the parsed value, or a str reason when the answer is unusable. An unusable answer
    is asked again, up to ``spec.max_tries`` asks in all: as `repair(conversation, answer, reason)` returns
    (e.g. the reason appended for the teacher to fix), or the same conversation (the try number in the cache
    key makes it a new request). A request that fails for good is not asked again.

    Returns (key -> parsed value, key -> :class:`Failure`), the failures in the order they happened. Counts:
    ``teacher_error``; ``{label}{ask}_{reason}`` per unusable answer; the reason once more for a conversation
    that ends unusable; ``requests_sent`` and ``cache_hits``.
    """
    cache = AnswerCache(cache_path)
    parsed: dict[str, Any] = {}
    failures: dict[str, Failure] = {}
    conversations = dict(conversations)
    try:
        client = TeacherClient(spec, cache)
        pending = list(conversations)
        for attempt in range(1, spec.max_tries + 1):
            if not pending:
                break
            requests = {key: TeacherRequest(client.cache_key(conversations[key], attempt), conversations[key])
                        for key in pending}
            answers = client.complete_many(list(requests.values()), desc=f"{desc} {label} {attempt}")
            retry = []
            for key in pending:
                answer = answers[requests[key].key]
                if isinstance(answer, TeacherError):
                    counts["teacher_error"] += 1
                    failures[key] = Failure("teacher_error", detail=str(answer))
                    continue
                value = parse(answer)
                if not isinstance(value, str):
                    parsed[key] = value
                    continue
                counts[f"{label}{attempt}_{value}"] += 1
                if attempt < spec.max_tries:
                    if repair is not None:
                        conversations[key] = repair(conversations[key], answer, value)
                    retry.append(key)
                else:
                    counts[value] += 1
                    failures[key] = Failure(value, output=answer)
            pending = retry
        counts["requests_sent"] = client.requests_sent
        counts["cache_hits"] = client.cache_hits
    finally:
        cache.close()
    return parsed, failures


def _is_local(url: str) -> bool:
    return any(h in url for h in ("://127.0.0.1", "://localhost", "://0.0.0.0"))
