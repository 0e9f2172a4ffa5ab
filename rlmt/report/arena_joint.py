"""Arena-Hard v2's official style-controlled score: one joint fit over every model of the report.

The official leaderboard fits Bradley-Terry jointly over all its models against the baseline, with
style coefficients shared by all of them (:mod:`rlmt.stats.arena_bt`); a cell alone cannot
(its ``scores.json`` holds ``style_controlled_alone``). This stage reads every evaluated model's
``arenahard-v2/judgments.jsonl`` (each row carries the game's label and both answers' official
style metadata) and fits ``hard_prompt`` and ``creative_writing`` separately, each against its own
baseline. A model's missing answers (``extra.missing_answers`` of its scores) lose both games
decisively, as in the cell's own score.

The number the official leaderboard shows is the *median* of its bootstrap (100 seeded resamples of
the weighted rows), with the 5th-95th percentiles as its interval; the fit on all rows (the *point
estimate*) can differ from it by a few tenths of a point. The main table's AH2 is the official
number; the point estimate is kept beside it, labelled.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from rlmt.stats import arena_bt
from rlmt.stats.arena_bt import Pair

BENCH = "arenahard-v2"


def model_pairs(model: str, bench_dir: Path) -> list[tuple[str, str, Pair]]:
    """(category, baseline, pair) for one model, from its judgments and scores."""
    path = bench_dir / "judgments.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    protocols = {r.get("protocol") for r in rows}
    protocol = "official" if "official" in protocols else next(iter(protocols), None)
    games: dict[str, dict] = {}
    for r in rows:
        if r.get("protocol") != protocol:
            continue
        if "style" not in r:
            raise ValueError(f"{path}: judgment rows lack style metadata (judged before the joint fit existed); "
                             "rerun `rlmt eval judge` (cached replies are reused)")
        g = games.setdefault(r["id"], {"category": r["category"], "baseline": r["baseline"], "style": r["style"],
                                       "baseline_style": r["baseline_style"], "game1": None, "game2": None})
        g[r["game"]] = r["parsed"] if r["ok"] else None
    out = [(g["category"], g["baseline"], Pair(model, uid, g["game1"], g["game2"], g["style"], g["baseline_style"]))
           for uid, g in games.items()]
    scores = bench_dir / "scores.json"
    if scores.exists():
        extra = json.loads(scores.read_text()).get("extra", {})
        missing = extra.get("missing_answers") or extra.get("official", extra.get("paper", {})).get("missing_answers", {})
        empty = dict.fromkeys(arena_bt.STYLE_KEYS, 0)  # the style of a missing answer (no tokenizer needed)
        for uid, m in (missing or {}).items():
            out.append((m["category"], m["baseline"], Pair(model, uid, "A>>B", "B>>A", empty, m["baseline_style"])))
    return out


def joint_leaderboards(models: list[str], eval_root: str | Path, *, official_rounds: int = 100,
                       our_rounds: int = 200, seed: int = 0) -> dict[str, arena_bt.Leaderboard]:
    """category -> the joint leaderboard over ``models`` (those with Arena-Hard judgments)."""
    by_category: dict[str, list[Pair]] = {}
    baselines: dict[str, str] = {}
    for model in models:
        bench_dir = Path(eval_root) / model / BENCH
        if not (bench_dir / "judgments.jsonl").exists():
            continue
        for category, baseline, pair in model_pairs(model, bench_dir):
            if baselines.setdefault(category, baseline) != baseline:
                raise ValueError(f"{model}: {category} judged against {baseline}, others against {baselines[category]}")
            by_category.setdefault(category, []).append(pair)
    return {c: arena_bt.leaderboard(pairs, c, baselines[c], official_rounds=official_rounds,
                                       our_rounds=our_rounds, seed=seed)
            for c, pairs in sorted(by_category.items())}


def joint_table(boards: dict[str, arena_bt.Leaderboard]) -> pl.DataFrame:
    records = []
    for category, b in boards.items():
        for model in sorted(b.raw):
            med, p05, p95 = b.official_bootstrap[model]
            lo, hi = b.prompt_ci[model]
            records.append({"category": category, "model": model, "baseline": b.baseline,
                            "win_rate": b.raw[model], "style_controlled": b.style_controlled[model],
                            "official_bootstrap_median": med, "official_p05": p05, "official_p95": p95,
                            "ours_ci95_low": lo, "ours_ci95_high": hi,
                            "dropped_pairs_all_models": b.dropped_pairs})
    return pl.DataFrame(records)


def markdown(table: pl.DataFrame) -> list[str]:
    lines = ["## Arena-Hard v2: official style control (joint fit over every model here)", "",
             f"Official rules: {arena_bt.OFFICIAL_VERSION} (o200k token length and markdown densities, code "
             "removed, features standardised over all weighted rows; Bradley-Terry over all models and the "
             "baseline). **Official score**: what the arena-hard-auto leaderboard shows, the median of the "
             "official bootstrap (100 seeded resamples of the weighted rows) of the style-controlled fit, with "
             "its 5th-95th percentiles. *Point estimate*: the same fit on all rows, once; not the leaderboard's "
             "number (it can differ by a few tenths of a point). *Win rate*: without style control. *Ours 95 % "
             "CI*: prompts resampled. hard_prompt and creative_writing are separate leaderboards. The main "
             "table's AH2 is, for a model judged under the official protocol, its hard_prompt official score "
             "(5-95 % as its interval); under the paper protocol, the paper's variant: hard_prompt and "
             "creative_writing pooled, fitted on that model's battles alone.", ""]
    if table.is_empty():
        return lines + ["_(no Arena-Hard judgments)_", ""]
    lines += ["| category | model | official score [5, 95] | point estimate (not official) | win rate | ours 95 % CI |",
              "|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        lines.append(f"| {r['category']} | {r['model']} | **{r['official_bootstrap_median']:.1f}** "
                     f"[{r['official_p05']:.1f}, {r['official_p95']:.1f}] | {r['style_controlled']:.1f} | "
                     f"{r['win_rate']:.1f} | [{r['ours_ci95_low']:.1f}, {r['ours_ci95_high']:.1f}] |")
    return lines + [""]


HEADLINE_CATEGORY = "hard_prompt"  # the official leaderboard's headline


def with_joint_headline(rows: list, table: pl.DataFrame, bench: str = BENCH) -> list:
    """The report rows with AH2 set to the official leaderboard's number -- the median of the official
    bootstrap of the joint hard_prompt style-controlled fit, its 5-95 % as the interval -- for every
    model judged under the official protocol; the joint fit's point estimate is kept as
    ``point_estimate`` and the cell's own number as ``cell_alone_value``.

    A cell's own scores.json can only fit its battles alone; the report, which sees every model, gives
    the official number. Rows under the paper protocol keep their pooled cell-alone headline, which is
    the paper's variant. Rows are changed in place and returned.
    """
    if table.is_empty():
        return rows
    joint = {r["model"]: r for r in table.filter(pl.col("category") == HEADLINE_CATEGORY).iter_rows(named=True)}
    for row in rows:
        score = row.scores.get(bench)
        fit = joint.get(row.model)
        if score is None or fit is None or score.get("protocol") != "official":
            continue
        row.scores[bench] = {**score, "metric": f"{HEADLINE_CATEGORY}.style_controlled_joint.official_median",
                             "value": fit["official_bootstrap_median"], "ci_low": fit["official_p05"],
                             "ci_high": fit["official_p95"], "point_estimate": fit["style_controlled"],
                             "cell_alone_value": score["value"]}
    return rows
