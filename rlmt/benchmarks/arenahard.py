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

Scores (:mod:`rlmt.benchmarks.arena_style` has the official rules, lmarena/arena-hard-auto
``196f6b8``)
------------------------------------------------------------------------------------------------
``hard_prompt`` and ``creative_writing`` are scored separately, as the official code does (each
against its own baseline); ``pooled.*`` puts both into one number, the paper's variant, labelled.

* ``<category>.win_rate``: *official* protocol: the mean of the weighted battle rows (a ``>>``
  verdict counts 3 times; the official leaderboard's number without style control); *paper*
  protocol: 1 / 0.5 / 0 per game, averaged. 95 % CI by resampling prompts.
* ``<category>.style_controlled_alone``: the official style-controlled Bradley-Terry fit (official
  features) over **this model's battles only**. The official number is a *joint* fit over every
  model of a leaderboard, so it is computed by the report stage, which sees all cells
  (:mod:`rlmt.report.arena_joint`); this one is what a cell can compute alone. Its CIs: ours (95 %,
  prompts resampled) in ``ci_low``/``ci_high``; the official bootstrap (median, 5-95 %) in
  ``extra.official_bootstrap``.
* ``score``: paper protocol: ``pooled.style_controlled_alone`` (the paper's headline, pooled);
  official protocol: ``hard_prompt.style_controlled_alone``.

Judge replies (option ``verdict_parsing``): ``official`` (default) reads labels with the official
regexes (upper-cased, ``[[X]]`` then ``[X]``, last match); ``lenient`` is our earlier reading
(spaces inside ``[[ ]]``, contradictory labels unparsed). ``extra.lenient_rescued_replies`` counts
the replies the lenient reading parses and the official one does not. A failed game drops its
whole pair, as official (option ``failed_game: keep_other`` keeps the other game, ours;
``extra.pairs_dropped`` / ``extra.games_kept_from_broken_pairs`` count them). An answer that is
missing (a generation failure) loses both games decisively.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from rlmt.benchmarks import arena_style
from rlmt.benchmarks.arena_style import Pair
from rlmt.benchmarks.base import (BenchmarkError, BenchmarkResult, Item, ItemScore, Metric, answer_of, limit_items,
                                  read_json_rows, register)
from rlmt.benchmarks.judged import JudgedBenchmark, JudgeTask, answered, count_failures, resolve_data_file
from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.judges.parsing import parse_arena_verdict, parse_arena_verdict_official

ROOT = "benchmarks/arena-hard-v2.0"
DEFAULT_BASELINES = {"hard_prompt": "o3-mini-2025-01-31", "creative_writing": "gemini-2.0-flash-001"}
CATEGORIES = ("hard_prompt", "creative_writing")
PARSERS = {"official": parse_arena_verdict_official, "lenient": parse_arena_verdict}


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

    @property
    def parsing(self) -> str:
        mode = self.options.get("verdict_parsing", "official")
        if mode not in PARSERS:
            raise BenchmarkError(f"arenahard-v2: unknown verdict_parsing {mode!r}; allowed: {sorted(PARSERS)}")
        return mode

    def tasks(self, items, generations, protocol) -> list[JudgeTask]:
        out = []
        max_tokens = int(self.options.get("judge_max_tokens", 4096))
        parser = PARSERS[self.parsing]
        for item, answer in answered(items, generations):
            system = prompts.ARENA_SYSTEM_CREATIVE if item.reference["category"] == "creative_writing" \
                else prompts.ARENA_SYSTEM_HARD
            base = item.reference["baseline_answer"]
            # what the report's joint style-control fit needs, in every judgment row
            meta = {"category": item.reference["category"], "baseline": item.reference["baseline"],
                    "style": arena_style.style_metadata(answer), "baseline_style": arena_style.style_metadata(base)}
            for game, candidate in (("game1", "B"), ("game2", "A")):
                a, b = (base, answer) if candidate == "B" else (answer, base)
                text = prompts.ARENA_USER.format(prompt=item.reference["prompt"], response_a=a, response_b=b)
                out.append(JudgeTask(item.id, game, JudgePrompt(prompts.user(text, system), max_tokens),
                                     parser, {"candidate": candidate, **meta}))
        return out

    def pairs(self, items, generations, judgments) -> tuple[list[Pair], dict]:
        """One :class:`Pair` per item (game 1: baseline as A), with the counts of what was dropped."""
        keep_other = self.options.get("failed_game", "drop_pair") == "keep_other"
        pairs, counts = [], {"pairs_dropped": 0, "games_kept_from_broken_pairs": 0, "lenient_rescued_replies": 0,
                             "missing_answers": {}}
        for item in items:
            answer = answer_of(generations.get(item.id))
            base_style = arena_style.style_metadata(item.reference["baseline_answer"])
            if answer is None:  # no answer: a decisive loss in both games
                pairs.append(Pair(item.id, item.id, "A>>B", "B>>A", arena_style.style_metadata(""), base_style))
                # the report's joint fit reads judgments.jsonl, which has no row for these
                counts["missing_answers"][item.id] = {"category": item.reference["category"],
                                                      "baseline": item.reference["baseline"],
                                                      "baseline_style": base_style}
                continue
            labels = {"game1": None, "game2": None}
            for r in judgments.get(item.id, []):
                if r.get("raw") and parse_arena_verdict_official(r["raw"]) is None and parse_arena_verdict(r["raw"]):
                    counts["lenient_rescued_replies"] += 1
                if r["ok"]:
                    labels[r["game"]] = r["parsed"]
            style = arena_style.style_metadata(answer)
            if labels["game1"] is None and labels["game2"] is None:
                continue  # a judge failure: unscored
            if labels["game1"] is None or labels["game2"] is None:
                counts["pairs_dropped"] += 1
                if not keep_other:
                    continue
                counts["games_kept_from_broken_pairs"] += 1
            pairs.append(Pair(item.id, item.id, labels["game1"], labels["game2"], style, base_style))
        return pairs, counts

    def aggregate(self, items, generations, judgments, protocol) -> BenchmarkResult:
        official = protocol == "official"
        pairs, counts = self.pairs(items, generations, judgments)
        category = {it.id: it.reference["category"] for it in items}
        n_boot = int(self.options.get("bootstrap", 200))
        metrics: dict[str, Metric] = {}
        official_boot: dict[str, list[float]] = {}
        per_item: list[ItemScore] = []
        scored = {p.uid for p in pairs}
        for item in items:
            if answer_of(generations.get(item.id)) is None:
                per_item.append(ItemScore(item.id, None, {"failure": "generation"}))
            elif item.id not in scored:
                per_item.append(ItemScore(item.id, None, {"failure": "judge"}))
        for p in pairs:
            if answer_of(generations.get(p.uid)) is not None:
                rows = _game_outcomes(p, official)
                per_item.append(ItemScore(p.uid, sum(rows) / len(rows), {"games": len(rows)}))
        groups = {c: [p for p in pairs if category[p.uid] == c] for c in CATEGORIES}
        groups["pooled"] = pairs
        for group, members in groups.items():
            if not members:
                continue
            rows = _rows(members, official)
            n = len({p.uid for p in members})
            raw = arena_style.raw_win_rates(rows)["m"]
            lo, hi = _prompt_ci(rows, style=False, rounds=n_boot)
            metrics[f"{group}.win_rate"] = Metric(100 * raw, 100 * lo, 100 * hi, n)
            sc = arena_style.win_rates(rows, style=True)["m"]
            lo, hi = _prompt_ci(rows, style=True, rounds=n_boot)
            metrics[f"{group}.style_controlled_alone"] = Metric(100 * sc, 100 * lo, 100 * hi, n)
            boot = arena_style.official_bootstrap(rows, True, rounds=int(self.options.get("official_bootstrap", 100)))["m"]
            official_boot[group] = [100 * x for x in boot]
        headline = "hard_prompt.style_controlled_alone" if official else "pooled.style_controlled_alone"
        if headline not in metrics:
            headline = next((k for k in metrics if k.endswith("style_controlled_alone")), None)
        if headline is not None:
            metrics = {"score": metrics[headline], **metrics}
        extra = {**count_failures(items, generations, judgments), **counts,
                 "headline": headline, "official_version": arena_style.OFFICIAL_VERSION,
                 "verdict_parsing": self.parsing, "failed_game": self.options.get("failed_game", "drop_pair"),
                 "weights": "decisive verdicts x3 (official)" if official else "all verdicts x1 (paper)",
                 "style_features": list(arena_style.STYLE_KEYS),
                 "style_control": "alone: this model's battles only; the official joint fit is in the report",
                 "pooled": "hard_prompt and creative_writing pooled: the paper's variant, not an official number",
                 "ci": "95% percentile interval, prompts resampled (ours)",
                 "official_bootstrap": {g: {"median": v[0], "p05": v[1], "p95": v[2]} for g, v in official_boot.items()},
                 "categories": sorted(set(category.values()))}
        return BenchmarkResult(self.name, metrics, n=len(items), n_failed=sum(1 for s in per_item if s.value is None),
                               per_item=per_item, protocol=protocol, metric_version=self.metric_version, extra=extra)


def _game_outcomes(pair: Pair, weighted: bool) -> list[float]:
    """The model's outcome rows of one pair, game 2 (model as A) first as official: weighted rows
    (a decisive label 3 times) or one row per parsed game (paper)."""
    out: list[float] = []
    for label, model_is_a in ((pair.label2, True), (pair.label1, False)):
        if label is None:
            continue
        y = arena_style.LABEL_SCORE[label] if model_is_a else 1 - arena_style.LABEL_SCORE[label]
        out += [y] * (arena_style.WEIGHT if weighted and label in arena_style.DECISIVE else 1)
    return out


def _rows(pairs: list[Pair], weighted: bool) -> arena_style.Rows:
    """Battle rows of one model (named "m"): official weighted rows, or one row per game (paper)."""
    models, uids, outcomes, features = [], [], [], []
    for p in pairs:
        f = arena_style.relative_style(p.model_style, p.baseline_style)
        for y in _game_outcomes(p, weighted):
            models.append("m")
            uids.append(p.uid)
            outcomes.append(y)
            features.append(f)
    return arena_style.Rows(models, uids, np.array(outcomes), np.array(features).reshape(-1, 4))


def _prompt_ci(rows: arena_style.Rows, style: bool, rounds: int) -> tuple[float, float]:
    if len(set(rows.uids)) < 2 or rounds < 1:
        value = (arena_style.win_rates if style else lambda r, s: arena_style.raw_win_rates(r))(rows, style)["m"]
        return value, value
    if style:
        return arena_style.prompt_bootstrap(rows, True, rounds=rounds)["m"]
    uids = np.array(rows.uids)
    keys = sorted(set(rows.uids))
    rng = np.random.default_rng(0)
    means = []
    for _ in range(rounds):
        picked = np.concatenate([np.flatnonzero(uids == keys[k]) for k in rng.integers(0, len(keys), len(keys))])
        means.append(rows.outcomes[picked].mean())
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)
