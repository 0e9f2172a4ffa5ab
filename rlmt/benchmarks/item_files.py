"""Benchmark items on disk: ``results/data/benchmarks/<bench>/items.jsonl`` (model independent).

Generation reads the prompts (``id``, ``messages``) from it; scoring reads the gold fields
(``reference``) back, so every model is scored against exactly the items it was asked.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlmt.benchmarks.base import BenchmarkError, Item


def write_items(items: list[Item], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps({"id": item.id, "messages": item.messages, "reference": item.reference},
                               ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_items(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"items file not found: {path}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(Item(str(row["id"]), row["messages"], row.get("reference", {})))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise BenchmarkError(f"{path}:{lineno}: not an item row ({err})") from None
    return items
