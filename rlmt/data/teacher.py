"""A teacher model behind an OpenAI-compatible chat-completions endpoint, with a SQLite answer cache.

Works with OpenAI, Gemini's OpenAI-compatible endpoint and a vLLM server alike: it only speaks
``POST {base_url}/chat/completions``. The API key is read from the environment variable the
config names (never from the config itself) and is never logged or cached.

Every answer is cached under a key made of the endpoint's model, the messages, the sampling
parameters and the try number, so a rerun asks only what is missing and an interrupted run loses
at most the requests in flight. Requests run concurrently on a thread pool; 429, 5xx, timeouts
and malformed bodies are retried with exponential backoff, other 4xx fail at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from rlmt.config import TeacherSpec

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


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
    """Chat completions from one endpoint/model, cached and retried."""

    def __init__(self, spec: TeacherSpec, cache: AnswerCache):
        self.spec = spec
        self.cache = cache
        self.url = spec.base_url.rstrip("/") + "/chat/completions"
        self.requests_sent = 0
        self.cache_hits = 0
        self._count_lock = threading.Lock()
        key = None
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if key is None and not _is_local(spec.base_url):
                raise TeacherError(f"teacher: environment variable {spec.api_key_env} is not set "
                                   f"(the API key for {spec.base_url})")
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}

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
            futures = {pool.submit(self._post, req.messages): req for req in todo}
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

    def _post(self, messages: list[dict]) -> str:
        import requests

        body = {"model": self.spec.model, "messages": messages, "temperature": self.spec.temperature,
                "max_tokens": self.spec.max_tokens}
        last = "no attempt"
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(min(self.spec.backoff_s * 2 ** (attempt - 1), 60.0))
            with self._count_lock:
                self.requests_sent += 1
            try:
                resp = requests.post(self.url, json=body, headers=self._headers, timeout=self.spec.timeout_s)
            except requests.RequestException as err:
                last = f"{type(err).__name__}"
                continue
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise TeacherError(f"teacher: HTTP {resp.status_code} from {self.url}: {resp.text[:200]}")
            try:
                return resp.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError):
                last = "malformed response body"
                continue
        raise TeacherError(f"teacher: gave up after {self.spec.max_retries + 1} attempts ({last})")


def _is_local(url: str) -> bool:
    return any(h in url for h in ("://127.0.0.1", "://localhost", "://0.0.0.0"))
