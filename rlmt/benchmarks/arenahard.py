"""ArenaHard v2: 500 hard prompts (plus creative-writing prompts) judged pairwise against a
baseline's answers, in two games with the positions swapped.

Data (official arena-hard-auto v2.0 layout under ``<data_dir>/benchmarks/arena-hard-v2.0/``):
``question.jsonl`` rows ``{uid, category, subcategory, prompt}`` and one
``model_answer/<baseline>.jsonl`` per baseline with rows ``{uid, model, messages: [user,
{role: assistant, content: {answer}}]}``. Baselines per category (option ``baselines``): o3-mini
for ``hard_prompt``, gemini-2.0-flash for ``creative_writing``.

Game 1 shows the baseline as A and the model as B; game 2 swaps them. The judge ends with a label
on the verdict scale ``[[A>>B]] [[A>B]] [[A=B]] [[B>A]] [[B>>A]]``; creative-writing prompts use a
prompt without the "write your own answer first" step, as in the reference code.

Protocols
---------
* ``paper``: candidate win 1, tie 0.5, loss 0 per game (decisive and slight alike), averaged;
  CI by bootstrap over items.
* ``official``: Bradley-Terry with a decisive verdict counted 3 times.
Both report ``win_rate`` and ``style_controlled_win_rate`` (Bradley-Terry with length and markdown
features, :mod:`rlmt.benchmarks.style_control`), each with a 95% CI. An unparsed verdict is a
judge failure, left out (the reference code counted it as a tie).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from rlmt.benchmarks.base import (BenchmarkError, BenchmarkResult, Item, ItemScore, Metric, answer_of, limit_items,
                                  mean_metric, read_json_rows, register)
from rlmt.benchmarks.style_control import Battle, bt_with_ci, style_difference
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges.parsing import parse_arena_verdict

ROOT = "benchmarks/arena-hard-v2.0"
DEFAULT_BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
# verdict -> (winner position, decisive)
VERDICTS = {"A>>B": ("A", True), "A>B": ("A", False), "A=B": (None, False), "B>A": ("B", False),
            "B>>A": ("B", True)}


def _answer_text(row: dict) -> str:
    """The assistant answer of a model_answer row (v2: content is {"answer": ...}; v1: choices/turns)."""
    for msg in reversed(row.get("messages") or []):
        if msg.get("role") == "assistant":
            content = msg.get("content")
            return content.get("answer", "") if isinstance(content, dict) else str(content or "")
    choices = row.get("choices") or []
    if choices and choices[0].get("turns"):
        return str(choices[0]["turns"][0].get("content", ""))
    raise BenchmarkError(f"model answer {row.get('uid')!r} has no assistant message")


@register
class ArenaHardV2(JudgedBenchmark):
    name: ClassVar[str] = "arenahard-v2"
    metric_version: ClassVar[str] = "1"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        qpath = resolve_data_file(self.options, data_dir, "questions", f"{ROOT}/question.jsonl", "arenahard-v2")
        answer_dir = Path(self.options.get("answers_dir") or qpath.parent / "model_answer")
        baselines = {**DEFAULT_BASELINES, **(self.options.get("baselines") or {})}
        answers: dict[str, dict[str, str]] = {}
        for category, model in baselines.items():
            path = answer_dir / f"{model}.jsonl"
            if not path.exists():
                raise BenchmarkError(f"arenahard-v2: baseline answers for {category!r} not found: {path}")
            answers[category] = {str(r["uid"]): _answer_text(r) for r in read_json_rows(path, lines=True)}
        items = []
        for row in read_json_rows(qpath, lines=True):
            uid, category = str(row.get("uid", "")), row.get("category", "hard_prompt")
            if not uid or not row.get("prompt"):
                raise BenchmarkError(f"{qpath}: a question lacks 'uid' or 'prompt': {str(row)[:120]}")
            if category not in answers:
                raise BenchmarkError(f"{qpath}: question {uid} has category {category!r} with no baseline; "
                                     f"known: {sorted(answers)}")
            if uid not in answers[category]:
                raise BenchmarkError(f"baseline {baselines[category]} has no answer for question {uid}")
            items.append(Item(uid, [{"role": "user", "content": row["prompt"]}],
                              {"prompt": row["prompt"], "category": category,
                               "subcategory": row.get("subcategory"), "baseline": baselines[category],
                               "baseline_answer": answers[category][uid]}))
        return limit_items(items, limit, seed)

    def tasks(self, items, generations, protocol) -> list[JudgeTask]:
        out = []
        max_tokens = int(self.options.get("judge_max_tokens", 4096))
        for item, answer in answered(items, generations):
            system = prompts.ARENA_SYSTEM_CREATIVE if item.reference["category"] == "creative_writing" \
                else prompts.ARENA_SYSTEM_HARD
            base = item.reference["baseline_answer"]
            for game, candidate in (("game1", "B"), ("game2", "A")):
                a, b = (base, answer) if candidate == "B" else (answer, base)
                text = prompts.ARENA_USER.format(prompt=item.reference["prompt"], response_a=a, response_b=b)
                out.append(JudgeTask(item.id, game, JudgePrompt(prompts.user(text, system), max_tokens),
                                     parse_arena_verdict, {"candidate": candidate}))
        return out

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        official = protocol == "official"
        per_item, values, battles = [], [], []
        for item in items:
            answer = answer_of(generations.get(item.id))
            base = item.reference["baseline_answer"]
            if answer is None:  # no answer: a decisive loss in both games
                per_item.append(ItemScore(item.id, None, {"failure": "generation"}))
                values.append(0.0)
                style = style_difference("", base)
                battles += [Battle(item.id, 0.0, 3.0 if official else 1.0, style) for _ in range(2)]
                continue
            outcomes = []
            style = style_difference(answer, base)
            for r in judgments.get(item.id, []):
                if not r["ok"]:
                    continue
                winner, decisive = VERDICTS[r["parsed"]]
                y = 0.5 if winner is None else float(winner == r["candidate"])
                outcomes.append(y)
                battles.append(Battle(item.id, y, 3.0 if (official and decisive) else 1.0, style))
            if outcomes:
                values.append(float(np.mean(outcomes)))
                per_item.append(ItemScore(item.id, values[-1], {"games": len(outcomes)}))
            else:
                per_item.append(ItemScore(item.id, None, {"failure": "judge"}))
        n_boot = int(self.options.get("bootstrap", 200))
        metrics: dict[str, Metric] = {}
        if official:
            for key, sc in (("win_rate", False), ("style_controlled_win_rate", True)):
                v, lo, hi = bt_with_ci(battles, sc, n_resamples=n_boot)
                metrics[key] = Metric(100 * v, 100 * lo, 100 * hi, len(values))
        else:
            metrics["win_rate"] = mean_metric(values)
            v, lo, hi = bt_with_ci(battles, True, n_resamples=n_boot)
            metrics["style_controlled_win_rate"] = Metric(100 * v, 100 * lo, 100 * hi, len(values))
        metrics = {"score": metrics["style_controlled_win_rate"], **metrics}  # headline: the paper's "with style control"
        extra = {**count_failures(items, generations, judgments),
                 "weights": "decisive verdicts x3 (official)" if official else "all verdicts x1 (paper)",
                 "style_features": ["length", "headers", "lists", "bold"],
                 "categories": sorted({it.reference["category"] for it in items})}
        return BenchmarkResult(self.name, metrics, n=len(items), n_failed=sum(1 for s in per_item if s.value is None),
                               per_item=per_item, protocol=protocol, metric_version=self.metric_version, extra=extra)
