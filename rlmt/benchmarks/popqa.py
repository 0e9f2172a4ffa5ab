"""PopQA (~14k entity questions): correct when any gold alias occurs in the answer (the paper).

Official format (``popQA.tsv`` from the PopQA repository, or the Hugging Face ``akariasai/PopQA``
test split as JSON lines/parquet): ``id``, ``subj``, ``prop``, ``obj``, ..., ``question``,
``possible_answers`` (a JSON list of aliases, stored as a string). The reference code's
``data.json`` (a JSON list of the same rows) is accepted too.

Match rule: an alias, or its lower-case / capitalised / title-case variant, is a substring of the
answer — the reference code's case-variant substring match, not a normalised token match.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, ClassVar

from rlmt.benchmarks.base import (
    Benchmark,
    BenchmarkError,
    BenchmarkResult,
    Item,
    limit_items,
    mean_metric,
    read_json_rows,
    register,
    score_each,
)
from rlmt.benchmarks.ifeval import find_data_file

PROMPT = ("Answer the following question with a short snippet of text. "
          "The answer should not exceed 100 words.\n\nQuestion: {question}")
FILES = ("popQA.tsv", "test.jsonl", "data.json", "test.parquet")


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if path.suffix == ".parquet":
        import polars as pl

        return pl.read_parquet(path).to_dicts()
    return read_json_rows(path)


def aliases_of(value: Any) -> list[str]:
    """``possible_answers`` as a list: a JSON string (official) or already a list."""
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise ValueError("possible_answers must be a list of strings")
    return [a for a in value if a.strip()]


def alias_match(answer: str, aliases: list[str]) -> str | None:
    """The first alias (in any of its case variants) found in ``answer``."""
    for alias in aliases:
        for variant in (alias, alias.lower(), alias.capitalize(), alias.title()):
            if variant in answer:
                return alias
    return None


@register
class PopQA(Benchmark):
    name: ClassVar[str] = "popqa"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = find_data_file(data_dir, "popqa", FILES, self.name)
        items = []
        for i, row in enumerate(_read_rows(path)):
            if "question" not in row or "possible_answers" not in row:
                raise BenchmarkError(f"{path}: row {i} lacks 'question' or 'possible_answers'")
            try:
                aliases = aliases_of(row["possible_answers"])
            except (ValueError, json.JSONDecodeError) as err:
                raise BenchmarkError(f"{path}: row {i} (id {row.get('id')}): bad possible_answers ({err})") from None
            if not aliases:
                raise BenchmarkError(f"{path}: row {i} (id {row.get('id')}): no gold aliases")
            items.append(Item(id=str(row.get("id", i)),
                              messages=[{"role": "user", "content": PROMPT.format(question=row["question"].strip())}],
                              reference={"aliases": aliases, "prop": row.get("prop")}))
        return limit_items(items, limit, seed)

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        def judge(item: Item, answer: str) -> tuple[float, dict]:
            matched = alias_match(answer, item.reference["aliases"])
            return float(matched is not None), {"matched": matched}

        per_item, values, n_failed = score_each(items, generations, judge)
        metric = mean_metric(values, seed=int(ctx.get("seed", 0)))
        return BenchmarkResult(benchmark=self.name, metrics={"score": metric, "accuracy": metric}, n=len(items),
                               n_failed=n_failed, per_item=per_item, metric_version=self.metric_version)
