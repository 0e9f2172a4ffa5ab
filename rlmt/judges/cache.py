"""A persistent SQLite cache of judge replies.

Why: judging 1,000 items costs real money and hours; a job killed halfway (``kill -9``, a node
lost, a quota hit) must resume by sending only the requests whose replies are missing. Every
reply is committed the moment it arrives, so nothing already paid for is asked again.

The key is a digest of everything that determines a reply: the judge model, the messages and the
sampling parameters. The endpoint URL and the API key are deliberately *not* part of it (the same
model behind another URL gives the same judgment; a key must never be stored anywhere).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
)
"""


def cache_key(model: str, messages: list[dict], params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of (model, messages, params)."""
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """Thread-safe get/put on one SQLite file (WAL mode, so several jobs may share it)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(SCHEMA)

    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT text, prompt_tokens, completion_tokens FROM replies WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return {"text": row[0], "prompt_tokens": row[1], "completion_tokens": row[2]}

    def put(self, key: str, model: str, text: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO replies (key, model, text, prompt_tokens, completion_tokens, created) "
                "VALUES (?, ?, ?, ?, ?, ?)", (key, model, text, int(prompt_tokens), int(completion_tokens), time.time()))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
