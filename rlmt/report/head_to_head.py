"""Think versus no-think, head to head: each think cell's answers against its no-think twin's, prompt by prompt.

The paper's Table 1 claim in miniature. Every cell's reward win rate scores its answers to the same
held-out prompts with the same reward model (``reward-winrate``'s ``per_item.jsonl`` keeps each answer's
reward, length and digest), so a think cell and its **twin** -- the cell with the same base, start,
algorithm, reward model, mixture and SFT set, differing only in ``think`` -- can be compared directly,
without their references in between.

Per prompt (both cells scored it), the outcome of think over no-think, by the reward win rate's own rule
(:func:`rlmt.stats.paired_rewards.compare_rewards`):

* both answered: identical answers (equal digests: the same reward-model input) tie; otherwise 1 if
  the think reward exceeds the no-think reward by more than the tie tolerance (the larger of the two
  cells' ``tie_tolerance``), 0 if it falls short by more, 0.5 in between;
* only one answered (the other's thought never ended, or no generation): the one that answered wins;
  neither answered: a tie.

``win_rate``: the mean outcome (points), CI a seeded percentile bootstrap over prompts
(:func:`rlmt.stats.bootstrap.bootstrap_ci`, 2,000 resamples, seed 0). ``lc_win_rate``: the
length-controlled rate (:func:`rlmt.stats.length_control.lc_win_rate`: the paper's LC on AlpacaEval 2's
normalised length difference, read at equal length) over the prompts both cells answered, ``d`` = think
minus no-think answer words; its CI a percentile bootstrap over those prompts. A win rate above 50 says
the reward model prefers the think cell's answers; an LC near 50 beside a high raw rate says the
preference is mostly length.

The report reads files only; :func:`log_head_to_head` puts each row's numbers on the think cell's
MLflow parent run, which the report's tables link to.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from rlmt.stats.bootstrap import bootstrap_ci
from rlmt.stats.length_control import lc_bootstrap_ci, lc_win_rate, paired_lc_difference
from rlmt.stats.paired_rewards import DEFAULT_TIE_TOLERANCE, compare_rewards
from rlmt.workflow import Plan

BENCH = "reward-winrate"
METRIC_PREFIX = "think_vs_nothink"
SCHEMA = {
    "backbone": pl.Utf8, "start": pl.Utf8, "stage": pl.Utf8, "think_cell": pl.Utf8, "nothink_cell": pl.Utf8,
    "n_paired": pl.Int64, "win_rate": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
    "n_ties": pl.Int64, "n_both_answered": pl.Int64, "lc_win_rate": pl.Float64, "lc_ci_low": pl.Float64,
    "lc_ci_high": pl.Float64, "mean_word_difference": pl.Float64, "tie_tolerance": pl.Float64,
}


@dataclass(frozen=True)
class Answer:
    """One model's answer to one prompt as ``reward-winrate`` scored it (a ``per_item.jsonl`` row).

    ``reward`` None: the model gave no answer. ``words``/``reference_words``/``digest`` are None in
    score files older than metric version 5 (no length control then). ``value``: the outcome against
    the model's own reference (1, 0.5, 0; None when failed).
    """

    value: float | None
    reward: float | None
    words: int | None
    reference_words: int | None
    digest: str | None

    @property
    def both_answered(self) -> bool:
        """The model and its reference both answered, and both lengths are known."""
        return self.value is not None and self.words is not None and self.reference_words is not None


def read_answers(path: str | Path) -> dict[str, Answer]:
    """id -> :class:`Answer` from a reward win rate's ``per_item.jsonl``."""
    out = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        d = row.get("details") or {}
        out[str(row["id"])] = Answer(row.get("value"), d.get("policy_reward"), d.get("policy_words"),
                                     d.get("reference_words"), d.get("policy_answer_digest"))
    return out


def outcome(think: Answer, nothink: Answer, tie_tolerance: float) -> float:
    """1, 0.5 or 0: the think answer against the no-think answer to the same prompt (module docstring)."""
    if think.reward is None or nothink.reward is None:
        return 0.5 if think.reward is None and nothink.reward is None else (0.0 if think.reward is None else 1.0)
    if think.digest is not None and think.digest == nothink.digest:
        return 0.5
    return compare_rewards(think.reward, nothink.reward, tie_tolerance)


def paired(think: dict[str, Answer], nothink: dict[str, Answer], tie_tolerance: float) -> dict[str, Any]:
    """The head-to-head numbers of two cells' answers (points; NaN/None where there is nothing to pair)."""
    common = sorted(set(think) & set(nothink))
    by_prompt = {i: outcome(think[i], nothink[i], tie_tolerance) for i in common}
    outcomes = list(by_prompt.values())
    lo, hi = bootstrap_ci(outcomes)
    answered = [i for i in common if think[i].reward is not None and nothink[i].reward is not None
                and think[i].words is not None and nothink[i].words is not None]
    y = [by_prompt[i] for i in answered]
    d = [think[i].words - nothink[i].words for i in answered]
    lc = lc_win_rate(y, d)
    lc_lo, lc_hi = lc_bootstrap_ci(y, d)
    return {"n_paired": len(common), "win_rate": 100 * sum(outcomes) / len(outcomes) if outcomes else math.nan,
            "ci_low": 100 * lo, "ci_high": 100 * hi, "n_ties": sum(1 for o in outcomes if o == 0.5),
            "n_both_answered": len(answered), "lc_win_rate": lc.value, "lc_ci_low": lc_lo, "lc_ci_high": lc_hi,
            "mean_word_difference": sum(d) / len(d) if d else math.nan}


def lc_delta(think: dict[str, Answer], nothink: dict[str, Answer]) -> tuple[float, float, float, int]:
    """LC win rate of the think cell minus the no-think cell's, each against its own reference, paired over
    the prompts both cells were scored on (:func:`rlmt.stats.length_control.paired_lc_difference`).

    Returns (delta, ci_low, ci_high, n_paired) in points; NaNs when a side has no length to control for.
    """
    common = sorted(set(think) & set(nothink))

    def side(answers: dict[str, Answer]) -> tuple[list[float], list[float]]:
        ys = [answers[i].value if answers[i].both_answered else math.nan for i in common]
        ds = [answers[i].words - answers[i].reference_words if answers[i].both_answered else 0.0 for i in common]
        return ys, ds

    (ya, da), (yb, db) = side(think), side(nothink)
    delta, lo, hi = paired_lc_difference(ya, da, yb, db) if common else (math.nan,) * 3
    return delta, lo, hi, len(common)


def tie_tolerance(*score_files: str | Path | None) -> float:
    """The larger of the tie tolerances the reward win rate's ``scores.json`` files state, else the default."""
    found = []
    for source in score_files:
        if source and Path(source).exists():
            tol = json.loads(Path(source).read_text(encoding="utf-8")).get("extra", {}).get("tie_tolerance")
            if tol is not None:
                found.append(float(tol))
    return max(found) if found else DEFAULT_TIE_TOLERANCE



def twins(plan: Plan) -> list[tuple[str, str]]:
    """(think cell, no-think cell) for every think cell whose twin (same everything but think) is in the grid."""
    out = []
    for cell in plan.cells:
        if cell.think:
            twin = cell.model_copy(update={"think": False})
            if twin.name in plan.cell_by_name:
                out.append((cell.name, twin.name))
    return out


def head_to_head(plan: Plan, rows: Iterable[Any]) -> pl.DataFrame:
    """One row per twin pair whose reward win rates were both scored with per-item files.

    ``rows``: the report's rows (:class:`rlmt.report.tables.Row`: ``model``, ``backbone``, ``start``,
    ``stage``, ``scores``).
    """
    by_model = {r.model: r for r in rows}
    records = []
    for think_cell, nothink_cell in twins(plan):
        t, n = by_model.get(think_cell), by_model.get(nothink_cell)
        ts, ns = (t.scores.get(BENCH) if t else None), (n.scores.get(BENCH) if n else None)
        if not ts or not ns or not ts.get("per_item") or not ns.get("per_item"):
            continue
        if not (Path(ts["per_item"]).exists() and Path(ns["per_item"]).exists()):
            continue
        tol = tie_tolerance(ts.get("source"), ns.get("source"))
        numbers = paired(read_answers(ts["per_item"]), read_answers(ns["per_item"]), tol)
        records.append({"backbone": t.backbone, "start": t.start, "stage": t.stage, "think_cell": think_cell,
                        "nothink_cell": nothink_cell, **numbers, "tie_tolerance": tol})
    return pl.DataFrame(records, schema=SCHEMA)


def run_metrics(row: dict) -> dict[str, float | None]:
    """The numbers of one head-to-head row, as metrics of the think cell's parent run."""
    keys = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "lc_ci_low", "lc_ci_high", "n_paired", "n_both_answered")
    return {f"{METRIC_PREFIX}.{k}": row[k] for k in keys}


def log_head_to_head(plan: Plan, table: pl.DataFrame, *, uri: str | None, experiment: str) -> dict[str, str]:
    """Put each row's numbers on its think cell's MLflow parent run (think cell -> run id)."""
    from rlmt.tracking import update_cell_parent

    done = {}
    for row in table.iter_rows(named=True):
        cell = plan.cell_by_name[row["think_cell"]]
        done[cell.name] = update_cell_parent(cell, run_metrics(row), uri=uri, experiment=experiment)
    return done


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _ci(lo: Any, hi: Any) -> str:
    return "–" if _fmt(lo) == "–" else f"[{_fmt(lo)}, {_fmt(hi)}]"


INTRO = ("Each think cell against its no-think twin (same base, start, algorithm, reward model and mixture), "
         "on the reward win rate's prompts and reward model: per prompt, the think answer wins (1), ties (0.5) "
         "or loses (0) by the win rate's tie rule; a cell without an answer loses to one with. WR: mean outcome, "
         "95 % percentile bootstrap over prompts. LC: the same at equal answer length (paper's LC on "
         "tanh(word difference / sd), prompts both answered). Δwords: mean think minus no-think answer words.")
HEADER = ("backbone", "start", "stage", "think cell", "no-think cell", "n", "WR think>no-think", "WR CI",
          "n both", "LC", "LC CI", "Δwords")


def _cells(row: dict) -> list[str]:
    return [row["backbone"], row["start"], row["stage"], row["think_cell"], row["nothink_cell"], str(row["n_paired"]),
            _fmt(row["win_rate"]), _ci(row["ci_low"], row["ci_high"]), str(row["n_both_answered"]),
            _fmt(row["lc_win_rate"]), _ci(row["lc_ci_low"], row["lc_ci_high"]), _fmt(row["mean_word_difference"])]


def markdown(table: pl.DataFrame, links: dict[str, str]) -> list[str]:
    """The report.md section: the rule, the table, and each pair's MLflow runs."""
    lines = ["## Think versus no-think, head to head (reward model, same prompts)", "", INTRO, ""]
    if table.is_empty():
        return lines + ["_(no think cell with a scored no-think twin)_", ""]
    lines += ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in table.iter_rows(named=True)]
    lines += ["", "Numbers are logged on the think cell's parent run (`think_vs_nothink.*`):", ""]
    for row in table.iter_rows(named=True):
        t, n = links.get(row["think_cell"]), links.get(row["nothink_cell"])
        lines.append(f"- `{row['think_cell']}`: {f'[run]({t})' if t else 'no run found'}; "
                     f"twin `{row['nothink_cell']}`: {f'[run]({n})' if n else 'no run found'}")
    return lines + [""]


def html(table: pl.DataFrame, links: dict[str, str]) -> list[str]:
    """The report.html section: cell names link to their parent runs, the numbers to the think cell's run."""
    from html import escape

    parts = ["<h2>Think versus no-think, head to head</h2>", f"<p>{escape(INTRO)}</p>"]
    if table.is_empty():
        return parts + ["<p>(no think cell with a scored no-think twin)</p>"]
    parts.append("<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in HEADER) + "</tr>")
    for row in table.iter_rows(named=True):
        cells = []
        for k, text in enumerate(_cells(row)):
            link = None
            if k == 3 or k >= 5:
                link = links.get(row["think_cell"])
            elif k == 4:
                link = links.get(row["nothink_cell"])
            body = escape(text)
            cells.append(f"<td><a href='{escape(link)}'>{body}</a></td>" if link else f"<td>{body}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return parts
