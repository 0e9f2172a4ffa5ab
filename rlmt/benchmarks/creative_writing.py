"""Creative Writing v3 (EQ-Bench): 32 story prompts x 3 seed modifiers = 96 pieces, each graded by
a judge on a 22-criterion rubric.

Data (``<data_dir>/benchmarks/creativewritingv3/``): ``prompts_v3.json`` (id -> {category, title,
writing_prompt with a ``<SEED>`` slot, seed_modifiers}), ``criteria.txt`` (22 names, one a line)
and ``negative_criteria.txt`` (the 9 flaws among them).

Scoring, as the reference code: every criterion 0-20; a flaw's score is inverted (20 - x) so
higher is always better; the piece's score is the mean over criteria times 5 (0-100); the
benchmark's score is the mean over pieces. Answers are cut at 3,200 words before judging. The
official tool grades the same rubric the same way, so there is one protocol ("paper").

Judge replies (option ``rubric_parsing``):

* ``official`` (default; EQ-bench/creative-writing-bench ``core/scoring.py``): every ``name: N``,
  ``name: Score N`` or ``name: [N]`` in the reply counts, under its verbatim name; a flaw is
  inverted only when its name is written exactly (a bold ``**Meandering**: 3`` is averaged
  uninverted, and so is any stray ``Note: 5``); scores above 20 are dropped; the piece is the mean
  of all of them; a reply with none is a judge failure.
* ``lenient`` (ours): only the rubric's criteria, names matched ignoring case, bullets and bold,
  after ``[Scores]``; a reply scoring fewer than ``min_criteria_fraction`` (0.5) of the criteria
  is a judge failure.

``extra.lenient_rescued_replies`` counts replies the lenient reading scores and the official one
does not; ``extra.lenient_changed_pieces`` those it scores differently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from rlmt.benchmarks.base import BenchmarkError, BenchmarkResult, Item, ItemScore, answer_of, limit_items, mean_metric, register
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges.parsing import parse_rubric, parse_rubric_official

ROOT = "benchmarks/creativewritingv3"
SEEDS_PER_PROMPT = 3


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@register
class CreativeWritingV3(JudgedBenchmark):
    name: ClassVar[str] = "creative-writing-v3"
    metric_version: ClassVar[str] = "1"
    protocols: ClassVar[tuple[str, ...]] = ("paper",)

    def _criteria(self) -> tuple[list[str], set[str]]:
        data_dir = Path(self.options["data_dir"]) if self.options.get("data_dir") else None
        crit = _lines(resolve_data_file(self.options, data_dir, "criteria", f"{ROOT}/criteria.txt", "creative-writing-v3"))
        neg = set(_lines(resolve_data_file(self.options, data_dir, "negative_criteria", f"{ROOT}/negative_criteria.txt",
                                           "creative-writing-v3")))
        unknown = neg - set(crit)
        if unknown:
            raise BenchmarkError(f"creative-writing-v3: negative criteria {sorted(unknown)} are not in criteria.txt")
        return crit, neg

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        if data_dir is not None:
            self.options.setdefault("data_dir", str(data_dir))
        path = resolve_data_file(self.options, data_dir, "path", f"{ROOT}/prompts_v3.json", "creative-writing-v3")
        raw = json.loads(path.read_text(encoding="utf-8"))
        n_seeds = int(self.options.get("seeds_per_prompt", SEEDS_PER_PROMPT))
        items = []
        for pid, row in raw.items():
            mods = row.get("seed_modifiers") or []
            if "<SEED>" not in row.get("writing_prompt", "") or len(mods) < n_seeds:
                raise BenchmarkError(f"{path}: prompt {pid} needs a <SEED> slot and >= {n_seeds} seed modifiers")
            for k in range(n_seeds):
                text = row["writing_prompt"].replace("<SEED>", mods[k])
                items.append(Item(f"{pid}-{k + 1}", [{"role": "user", "content": text}],
                                  {"prompt": text, "category": row.get("category"), "title": row.get("title")}))
        return limit_items(items, limit, seed)

    def tasks(self, items, generations, protocol) -> list[JudgeTask]:
        crit, neg = self._criteria()
        listing = "\n".join(f"- {c}{' (flaw)' if c in neg else ''}" for c in crit)
        max_words = int(self.options.get("max_words", 3200))
        out = []
        for item, answer in answered(items, generations):
            text = prompts.CREATIVE_RUBRIC_USER.format(prompt=item.reference["prompt"],
                                                       response=prompts.truncate_words(answer, max_words),
                                                       criteria=listing)
            out.append(JudgeTask(item.id, "rubric", JudgePrompt(prompts.user(text), int(self.options.get(
                "judge_max_tokens", 1500))), self._parser(crit), {}))
        return out

    @property
    def parsing(self) -> str:
        mode = self.options.get("rubric_parsing", "official")
        if mode not in ("official", "lenient"):
            raise BenchmarkError(f"creative-writing-v3: unknown rubric_parsing {mode!r}; allowed: lenient, official")
        return mode

    def _parser(self, crit: list[str], mode: str | None = None):
        need = max(1, int(len(crit) * float(self.options.get("min_criteria_fraction", 0.5)) + 0.5))

        def lenient(text: str | None) -> dict | None:
            scores = parse_rubric(text, crit)
            return scores if len(scores) >= need else None

        def official(text: str | None) -> dict | None:
            return parse_rubric_official(text) or None
        return official if (mode or self.parsing) == "official" else lenient

    def piece_score(self, scores: dict[str, float], negative: set[str]) -> float | None:
        """Mean of the (flaw-inverted) scores, times 5: 0-100. As official, a value above 20 after
        inversion (a flaw scored below 0) is left out; None when nothing is left."""
        adjusted = [20.0 - v if name in negative else v for name, v in scores.items()]
        adjusted = [v for v in adjusted if v <= 20]
        return 5.0 * sum(adjusted) / len(adjusted) if adjusted else None

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        crit, neg = self._criteria()
        per_item, values = [], []
        for item in items:
            if answer_of(generations.get(item.id)) is None:
                per_item.append(ItemScore(item.id, None, {"failure": "generation"}))
                values.append(0.0)
                continue
            ok = [r for r in judgments.get(item.id, []) if r["ok"]]
            value = self.piece_score(ok[0]["parsed"], neg) if ok else None
            if value is None:
                per_item.append(ItemScore(item.id, None, {"failure": "judge"}))
                continue
            per_item.append(ItemScore(item.id, value, {"criteria_scored": len(ok[0]["parsed"])}))
            values.append(value)
        official, lenient = self._parser(crit, "official"), self._parser(crit, "lenient")
        rescued = changed = 0
        for rows in judgments.values():
            for r in rows:
                if not r.get("raw"):
                    continue
                a, b = official(r["raw"]), lenient(r["raw"])
                if a is None and b is not None:
                    rescued += 1
                elif a is not None and b is not None and self.piece_score(a, neg) != self.piece_score(b, neg):
                    changed += 1
        extra = {**count_failures(items, generations, judgments), "n_criteria": len(crit), "n_negative": len(neg),
                 "rubric_parsing": self.parsing, "lenient_rescued_replies": rescued, "lenient_changed_pieces": changed}
        return BenchmarkResult(self.name, {"score": mean_metric(values, scale=1.0)}, n=len(items),
                               n_failed=sum(1 for s in per_item if s.value is None), per_item=per_item,
                               protocol=protocol, metric_version=self.metric_version, extra=extra)
