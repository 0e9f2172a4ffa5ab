"""MMLU-Redux (5,700 re-annotated MMLU questions), chain-of-thought prompt, "Answer: X" parsing.

Two protocols, both reported:

* ``score`` / ``accuracy_paper`` — the paper's 5,376 questions: ``error_type == "ok"`` (5,330)
  plus the ``wrong_groundtruth`` questions whose ``correct_answer`` is an option index (46),
  relabelled to it; the other flawed questions are left out (the reference code's protocol);
* ``accuracy_full`` — all 5,700 questions against the original MMLU label.

An answer without a parsable "Answer: <letter>" is wrong (not failed): the model answered, just
not in a usable form. Only a missing answer (thought never ended) is failed.
"""

from __future__ import annotations

import re
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
    read_json_rows,
    register,
)
from rlmt.benchmarks.ifeval import find_data_file

LETTERS = "ABCDEFGHIJ"
PROMPT = (
    "Answer the following multiple choice question. Think step by step before answering.\n\n"
    "Question: {question}\n\n{options}\n\n"
    'Mark your final uppercase letter answer after "Answer:"'
)
ANSWER_RE = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?[:：]?[\s\*\(\[]*([A-J])(?![A-Za-z])")


def parse_choice(text: str) -> str | None:
    """The letter after the last "Answer:" (markdown bold and brackets tolerated)."""
    matches = ANSWER_RE.findall(text)
    return matches[-1].upper() if matches else None


def _paper_label(row: dict) -> int | None:
    if row["error_type"] == "ok":
        return int(row["answer"])
    if row["error_type"] == "wrong_groundtruth":
        correct = str(row.get("correct_answer") or "").strip()
        if correct.isdigit() and int(correct) < len(row["choices"]):
            return int(correct)
    return None


@register
class MMLURedux(Benchmark):
    name: ClassVar[str] = "mmlu-redux"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        path = find_data_file(data_dir, "mmlu_redux", ("data.json", "data.jsonl"), self.name)
        rows = read_json_rows(path)
        items = []
        for i, row in enumerate(rows):
            missing = {"question", "choices", "answer", "error_type"} - set(row)
            if missing:
                raise BenchmarkError(f"{path}: row {i} lacks {sorted(missing)}")
            choices = list(row["choices"])
            options = "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(choices))
            paper = _paper_label(row)
            items.append(Item(
                id=str(row.get("id", i)),
                messages=[{"role": "user", "content": PROMPT.format(question=row["question"].strip(), options=options)}],
                reference={"answer": LETTERS[int(row["answer"])],
                           "paper_answer": LETTERS[paper] if paper is not None else None,
                           "error_type": row["error_type"], "category": row.get("category")},
            ))
        return limit_items(items, limit, seed)

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        per_item, paper, full = [], [], []
        n_failed = 0
        for item in items:
            row = generations.get(item.id)
            answer = answer_of(row)
            ref = item.reference
            if answer is None:
                n_failed += 1
                full.append(0.0)
                if ref["paper_answer"] is not None:
                    paper.append(0.0)
                per_item.append(failed_score(item.id, row))
                continue
            choice = parse_choice(answer)
            full.append(float(choice == ref["answer"]))
            value = float(choice == (ref["paper_answer"] or ref["answer"]))
            if ref["paper_answer"] is not None:
                paper.append(value)
            per_item.append(ItemScore(item.id, value, {"parsed": choice, "in_paper_protocol": ref["paper_answer"] is not None}))
        seed = int(ctx.get("seed", 0))
        accuracy_paper = mean_metric(paper, seed=seed)
        return BenchmarkResult(
            benchmark=self.name, n=len(items), n_failed=n_failed, per_item=per_item, protocol="paper",
            metric_version=self.metric_version,
            metrics={"score": accuracy_paper, "accuracy_paper": accuracy_paper,
                     "accuracy_full": mean_metric(full, seed=seed)},
            extra={"n_paper_protocol": len(paper), "n_full": len(full),
                   "n_unparsed": sum(1 for s in per_item if s.value is not None and s.details["parsed"] is None)},
        )
