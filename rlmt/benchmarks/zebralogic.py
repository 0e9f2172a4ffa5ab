"""ZebraLogic grid puzzles: the model fills a JSON grid; puzzle- and cell-level accuracy.

The prompt gives the JSON template (ZeroEval's layout: ``{"reasoning": ..., "solution":
{"House 1": {"Name": "___", ...}, ...}}``). The *last* JSON object in the answer that has a
``solution`` is the model's grid. Cells compare case- and whitespace-insensitively. Puzzle
accuracy (the paper's metric) needs every cell right; cell accuracy is the fraction of cells.
An answer without a parsable grid is wrong (0 cells), not failed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from rlmt.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    BenchmarkResult,
    Item,
    ItemScore,
    answer_of,
    failed_score,
    limit_items,
    mean_metric,
    register,
)
from rlmt.benchmarks.ifeval import find_data_file

PROMPT = """# Example Puzzle

Solve the following logic grid puzzle. Each house has exactly one value of every attribute.

# Puzzle to Solve

{puzzle}

# Instruction

Now please solve the above puzzle. Present your reasoning and solution in the following JSON format:

{template}
"""


def grid_template(header: list[str], n_houses: int) -> str:
    attributes = header[1:]
    solution = {f"House {h}": {a: "___" for a in attributes} for h in range(1, n_houses + 1)}
    return json.dumps({"reasoning": "___", "solution": solution}, indent=4)


def gold_grid(solution: dict) -> dict[str, dict[str, str]]:
    header, rows = solution["header"], solution["rows"]
    return {f"House {row[0]}": {attr: str(value) for attr, value in zip(header[1:], row[1:])} for row in rows}


def parse_grid(text: str) -> dict | None:
    """The last JSON object in ``text`` holding a ``solution`` mapping."""
    decoder = json.JSONDecoder()
    pos = text.rfind("{")
    while pos >= 0:
        try:
            obj, _ = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("solution"), dict):
            return obj["solution"]
        pos = text.rfind("{", 0, pos)
    return None


def _norm(value: Any) -> str:
    return " ".join(str(value).lower().split())


def compare(gold: dict[str, dict[str, str]], predicted: dict | None) -> tuple[int, int]:
    """(correct cells, total cells)."""
    total = sum(len(attrs) for attrs in gold.values())
    if not predicted:
        return 0, total
    lookup = {_norm(k): v for k, v in predicted.items() if isinstance(v, dict)}
    correct = 0
    for house, attrs in gold.items():
        row = {_norm(k): v for k, v in lookup.get(_norm(house), {}).items()}
        correct += sum(1 for attr, value in attrs.items() if _norm(row.get(_norm(attr), "")) == _norm(value))
    return correct, total


@register
class ZebraLogic(Benchmark):
    name: ClassVar[str] = "zebralogic"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = find_data_file(data_dir, "zebra_logic", ("zebra_logic.jsonl", "grid_mode.jsonl"), self.name)
        items = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                gold = gold_grid(row["solution"])
                header = row["solution"]["header"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise BenchmarkError(f"{path}:{lineno}: not a ZebraLogic row ({err!r})") from None
            prompt = PROMPT.format(puzzle=row["puzzle"].strip(), template=grid_template(header, len(gold)))
            items.append(Item(id=str(row["id"]), messages=[{"role": "user", "content": prompt}],
                              reference={"grid": gold, "size": row.get("size")}))
        return limit_items(items, limit, seed)

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        per_item, puzzles, cells = [], [], []
        n_failed = 0
        for item in items:
            row = generations.get(item.id)
            answer = answer_of(row)
            gold = item.reference["grid"]
            if answer is None:
                n_failed += 1
                puzzles.append(0.0)
                cells.append(0.0)
                per_item.append(failed_score(item.id, row))
                continue
            predicted = parse_grid(answer)
            correct, total = compare(gold, predicted)
            puzzles.append(float(correct == total))
            cells.append(correct / total if total else 0.0)
            per_item.append(ItemScore(item.id, float(correct == total),
                                      {"cells_correct": correct, "cells_total": total, "parsed": predicted is not None}))
        seed = int(ctx.get("seed", 0))
        puzzle_metric = mean_metric(puzzles, seed=seed)
        return BenchmarkResult(
            benchmark=self.name, n=len(items), n_failed=n_failed, per_item=per_item,
            metric_version=self.metric_version,
            metrics={"score": puzzle_metric, "puzzle_accuracy": puzzle_metric,
                     "cell_accuracy": mean_metric(cells, seed=seed)},
            extra={"n_unparsed": sum(1 for s in per_item if s.value is not None and not s.details["parsed"])},
        )
