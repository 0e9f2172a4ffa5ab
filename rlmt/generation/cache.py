"""A SQLite cache of completions, so that a rerun asks an endpoint only for what is missing.

One row per (model, messages, sampling params, sample index), keyed by the sha256 of their
canonical JSON. The endpoint URL and the API key are *not* part of the key and never stored: the
same model behind another proxy gives the same answers, and a key must never reach a file.
WAL mode lets a reader (a second process resuming) coexist with the writer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path

from rlmt.generation.base import Completion, Messages, SamplingParams

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    n_tokens INTEGER NOT NULL,
    created REAL NOT NULL DEFAULT (julianday('now'))
)
"""


def cache_key(model: str, messages: Messages, params: SamplingParams, sample: int) -> str:
    """What makes two requests the same request (``n`` is not part of it: samples are keyed one by one)."""
    spec = {"model": model, "messages": messages, "temperature": params.temperature, "top_p": params.top_p,
            "max_new_tokens": params.max_new_tokens, "seed": params.seed, "stop": list(params.stop), "sample": sample}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CompletionCache:
    """Thread-safe get/put of completions in one SQLite file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            row = self._db.execute("SELECT text, finish_reason, n_tokens FROM completions WHERE key = ?", (key,)).fetchone()
        return Completion(text=row[0], finish_reason=row[1], n_tokens=row[2]) if row else None

    def put(self, key: str, model: str, completion: Completion) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO completions (key, model, text, finish_reason, n_tokens) VALUES (?, ?, ?, ?, ?)",
                (key, model, completion.text, completion.finish_reason, completion.n_tokens))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
