"""MATH-500: the last ``\\boxed{}`` of the answer, checked against the gold answer by math-verify.

math-verify (Hugging Face's maintained checker) parses both sides to sympy and compares them, so
``0.5`` matches ``\\frac{1}{2}`` and ``(3, \\frac{\\pi}{2})`` matches its ``\\left(...\\right)``
spelling. Both sides are wrapped in ``\\boxed{}`` before parsing so math-verify reads the whole
expression rather than its first number. No ``\\boxed{}`` in the answer: wrong, not failed.
"""

from __future__ import annotations

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

PROMPT = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        return None
    depth = 0
    for pos in range(brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1:pos]
    return None


def equivalent(gold: str, predicted: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse("\\boxed{" + gold + "}")
    pred_parsed = parse("\\boxed{" + predicted + "}")
    if not gold_parsed or not pred_parsed:
        return gold.strip() == predicted.strip()
    return bool(verify(gold_parsed, pred_parsed))


@register
class Math500(Benchmark):
    name: ClassVar[str] = "math-500"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = find_data_file(data_dir, "math_500", ("test.json", "test.jsonl"), self.name)
        rows = read_json_rows(path)
        items = []
        for i, row in enumerate(rows):
            if "problem" not in row or "answer" not in row:
                raise BenchmarkError(f"{path}: row {i} lacks 'problem' or 'answer'")
            items.append(Item(id=str(row.get("unique_id", i)),
                              messages=[{"role": "user", "content": PROMPT.format(problem=row["problem"])}],
                              reference={"answer": row["answer"], "subject": row.get("subject"),
                                         "level": row.get("level")}))
        return limit_items(items, limit, seed)

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        def judge(item: Item, answer: str) -> tuple[float, dict]:
            boxed = last_boxed(answer)
            return float(boxed is not None and equivalent(item.reference["answer"], boxed)), {"boxed": boxed}

        per_item, values, n_failed = score_each(items, generations, judge)
        metric = mean_metric(values, seed=int(ctx.get("seed", 0)))
        return BenchmarkResult(benchmark=self.name, metrics={"score": metric, "accuracy": metric}, n=len(items),
                               n_failed=n_failed, per_item=per_item, metric_version=self.metric_version,
                               extra={"n_no_boxed": sum(1 for s in per_item if s.value is not None
                                                        and s.details["boxed"] is None)})
