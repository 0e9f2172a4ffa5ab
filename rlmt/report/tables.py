"""The main table in the paper's Table 1 layout, and think-minus-nothink deltas.

Rows: backbone × starting point × stage (the initial policy, then each algorithm), thinking ✗/✓.
Columns: the paper's seven main benchmarks with AvgChat (WB, AE2, AH2) and Avg (all seven), plus
any other benchmark the config evaluates (the embedded default: the demo IF set and the reward
win rate). Averages are taken only over the benchmarks a row has; the ``avg_over`` column says which.

A benchmark with side metrics (:data:`SIDE_METRICS`) gets a column for each beside its headline: the reward
win rate shows ``RM-WR both`` (its raw rate over the prompts both models answered) and ``RM-WR LC`` (the
length-controlled rate over the same prompts; compare the two: a missing answer has no length to control
for). A benchmark with a length-controlled metric (:data:`LC_METRICS`) also gets an ``<label> LC`` row beside
the raw row in the think-minus-nothink table (the LC difference, paired over prompts:
:func:`rlmt.report.head_to_head.lc_delta`). Side columns are not benchmarks: no average includes them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from rlmt import algorithms
from rlmt.report.head_to_head import lc_delta, read_answers
from rlmt.workflow import Plan

COLUMNS = {  # benchmark -> column label, in the paper's order
    "wildbench": "WB", "alpacaeval2": "AE2", "arenahard-v2": "AH2",
    "creative-writing-v3": "CWv3", "popqa": "PopQA", "ifbench": "IFBen", "mmlu-redux": "MMLU-R",
    "ifeval": "IFEval", "math-500": "MATH500", "zebralogic": "Zebra",
    "demo-if": "DemoIF", "reward-winrate": "RM-WR",
}
# benchmark -> (suffix, metric in scores.json) shown as "<label> <suffix>" columns beside its headline
SIDE_METRICS = {"reward-winrate": (("both", "win_rate_both_answered"), ("LC", "lc_win_rate"))}
# benchmark -> its length-controlled metric
LC_METRICS = {"reward-winrate": "lc_win_rate"}
CHAT = ("wildbench", "alpacaeval2", "arenahard-v2")
MAIN7 = ("wildbench", "alpacaeval2", "arenahard-v2", "creative-writing-v3", "popqa", "ifbench", "mmlu-redux")


@dataclass
class Row:
    model: str
    backbone: str
    start: str
    stage: str
    think: bool
    cell: str | None
    scores: dict[str, dict] = field(default_factory=dict)

    @property
    def key(self) -> tuple:
        return (self.backbone, self.start, self.stage)


def describe(plan: Plan, model: str) -> tuple[str, str, str, bool, str | None]:
    """(backbone, start, stage, think, cell) of an evaluated model."""
    if model in plan.cell_by_name:
        c = plan.cell_by_name[model]
        extra = [x for x, default in ((c.rm, plan.cells[0].rm), (c.mixture, plan.cells[0].mixture)) if x != default]
        stage = algorithms.get(c.algo).stage_label + (f" ({', '.join(extra)})" if extra else "")
        return c.base, c.start, stage, c.think, c.name
    p = plan.parse_policy(model)
    stage = algorithms.get("sft").stage_label if p["start"] == "warm-start" else "prompted"
    return p["base"], p["start"], stage, p["think"], None


def load_rows(plan: Plan, eval_root: str | Path = "results/eval") -> list[Row]:
    rows = []
    for model in plan.eval_models:
        path = Path(eval_root) / model / "scores.json"
        if not plan.benchmarks_for(model) or not path.exists():
            continue
        backbone, start, stage, think, cell = describe(plan, model)
        doc = json.loads(path.read_text())
        rows.append(Row(model, backbone, start, stage, think, cell, doc["benchmarks"]))
    order = {algorithms.get("sft").stage_label: 0, "prompted": 0}
    rows.sort(key=lambda r: (r.backbone, r.start, order.get(r.stage, 1), r.stage, r.think))
    return rows


def side_metric(scores: dict | None, name: str) -> dict | None:
    """A collected benchmark entry's metric ``name`` (value, ci_low, ci_high, n), or None (absent or NaN)."""
    metric = ((scores or {}).get("all_metrics") or {}).get(name)
    return metric if metric and metric.get("value") is not None else None


def lc_metric(scores: dict | None, bench: str) -> dict | None:
    """A collected benchmark entry's length-controlled metric, or None."""
    return side_metric(scores, LC_METRICS[bench]) if bench in LC_METRICS else None


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def main_table(rows: list[Row], benchmarks: list[str]) -> pl.DataFrame:
    """One row per model; value and CI columns per benchmark, then AvgChat and Avg."""
    benches = [b for b in COLUMNS if b in benchmarks] + [b for b in benchmarks if b not in COLUMNS]
    records = []
    for r in rows:
        rec: dict = {"backbone": r.backbone, "start": r.start, "stage": r.stage,
                     "think": "✓" if r.think else "✗", "model": r.model}
        for b in benches:
            s = r.scores.get(b)
            label = COLUMNS.get(b, b)
            rec[label] = s["value"] if s else None
            rec[f"{label} CI"] = (f"[{s['ci_low']:.1f}, {s['ci_high']:.1f}]"
                                  if s and s.get("ci_low") is not None else None)
            for suffix, name in SIDE_METRICS.get(b, ()):
                m = side_metric(s, name)
                rec[f"{label} {suffix}"] = m["value"] if m else None
                rec[f"{label} {suffix} CI"] = (f"[{m['ci_low']:.1f}, {m['ci_high']:.1f}]"
                                               if m and m.get("ci_low") is not None else None)
        chat = [r.scores[b]["value"] for b in CHAT if b in r.scores]
        rec["AvgChat"] = _mean(chat) if len(chat) == len(CHAT) else None
        main = [b for b in MAIN7 if b in r.scores]
        avg_over = main if main else [b for b in benches if b in r.scores]
        rec["Avg"] = _mean([r.scores[b]["value"] for b in avg_over]) if avg_over else None
        rec["avg_over"] = ",".join(COLUMNS.get(b, b) for b in avg_over)
        records.append(rec)
    return pl.DataFrame(records)


# ---------------------------------------------------------------------- paired deltas


def _per_item(path: str | None) -> dict[str, float]:
    if not path or not Path(path).exists():
        return {}
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[str(row["id"])] = 0.0 if row.get("value") is None else float(row["value"])
    return out


def _item_scale(headlines: list[tuple[float, dict[str, float]]], scale: float) -> float:
    """`scale` if the headlines are nearer `scale` x their items' mean than the plain mean, else 1."""
    scaled = plain = 0.0
    for value, items in headlines:
        mean = sum(items.values()) / len(items) if items else 0.0
        scaled += abs(scale * mean - value)
        plain += abs(mean - value)
    return scale if scaled < plain else 1.0


def paired_bootstrap(a: list[float], b: list[float], n_resamples: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> tuple[float, float, float]:
    """mean(a - b) over paired items, with a percentile bootstrap CI over items."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if d.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)


def _lc_delta(t: dict, n: dict, bench: str) -> dict | None:
    """Think's LC minus nothink's, paired over prompts (from the per-item files); without per-item lengths, the
    headlines' difference with no CI. None when either side has no LC metric."""
    t_lc, n_lc = lc_metric(t, bench), lc_metric(n, bench)
    if not (t_lc and n_lc):
        return None
    d = lo = hi = math.nan
    n_paired = 0
    if all(s.get("per_item") and Path(s["per_item"]).exists() for s in (t, n)):
        d, lo, hi, n_paired = lc_delta(read_answers(t["per_item"]), read_answers(n["per_item"]))
    if math.isnan(d):
        d, lo, hi = t_lc["value"] - n_lc["value"], math.nan, math.nan
    ci = (None, None) if math.isnan(lo) else (lo, hi)
    return {"think": t_lc["value"], "nothink": n_lc["value"], "delta": d, "ci_low": ci[0], "ci_high": ci[1],
            "n_paired": n_paired}


def think_deltas(rows: list[Row], benchmarks: list[str], scale: float = 100.0) -> pl.DataFrame:
    """Think minus nothink per (backbone, start, stage) and benchmark, paired over items."""
    by_key: dict[tuple, dict[bool, Row]] = {}
    for r in rows:
        by_key.setdefault(r.key, {})[r.think] = r
    records = []
    for key, pair in by_key.items():
        if True not in pair or False not in pair:
            continue
        for b in benchmarks:
            t, n = pair[True].scores.get(b), pair[False].scores.get(b)
            if not t or not n:
                continue
            ti, ni = _per_item(t.get("per_item")), _per_item(n.get("per_item"))
            common = sorted(set(ti) & set(ni))
            if common:
                # report in points: per-item values are 0..1 (pass and win rates: x scale) or already
                # in points (WildBench, -100..100: x 1); the headline says which (it is one of them x the items' mean)
                item_scale = _item_scale([(t["value"], ti), (n["value"], ni)], scale)
                d, lo, hi = paired_bootstrap([ti[i] for i in common], [ni[i] for i in common])
                d, lo, hi = d * item_scale, lo * item_scale, hi * item_scale
            else:
                d, lo, hi = t["value"] - n["value"], None, None
            records.append({"backbone": key[0], "start": key[1], "stage": key[2], "benchmark": COLUMNS.get(b, b),
                            "think": t["value"], "nothink": n["value"], "delta": d, "ci_low": lo, "ci_high": hi,
                            "n_paired": len(common)})
            lc_row = _lc_delta(t, n, b)
            if lc_row:  # the length-controlled row beside the raw one
                records.append({"backbone": key[0], "start": key[1], "stage": key[2],
                                "benchmark": f"{COLUMNS.get(b, b)} LC", **lc_row})
    return pl.DataFrame(records, schema={
        "backbone": pl.Utf8, "start": pl.Utf8, "stage": pl.Utf8, "benchmark": pl.Utf8, "think": pl.Float64,
        "nothink": pl.Float64, "delta": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64, "n_paired": pl.Int64})


def to_markdown(df: pl.DataFrame, float_fmt: str = "{:.1f}") -> str:
    """A GitHub-flavoured Markdown table of a polars frame."""
    if df.is_empty():
        return "_(no rows)_\n"
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.iter_rows():
        cells = []
        for v in row:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("–")
            elif isinstance(v, float):
                cells.append(float_fmt.format(v))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
