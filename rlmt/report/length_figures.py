"""The report's length diagnostics: each cell's verdict with its rule, and the three figures to look at.

From each cell's run directory (``results/checkpoints/<cell>/diagnostics/``, :mod:`rlmt.diagnostics`):

- ``length_reward_vs_answer__<cell>.png``: reward against answer tokens of every rollout the cell
  trained on, coloured by step (DPO: the samples its pairs were built from, step 0);
- ``length_correlation.png``: the reward-length correlation within each step's rollouts (Spearman
  solid, Pearson dashed), one line per cell;
- ``length_winrate_pareto__<benchmark>.png``: each evaluated model's win rate against the mean length
  of its answers on that benchmark (words of the extracted answer), with the Pareto front (no other
  model both shorter and better) drawn through: the view ODIN recommends for comparing policies whose
  reward may pay for length.

The verdict table shows the verdict saved at the end of training (the MLflow tag
``rlmt.length_verdict`` holds the same), the step since which it has read so on the steps so far, and
the numbers behind it; the rules are printed with it.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rlmt.diagnostics import (  # noqa: E402
    DPO_RULE,
    RL_RULE,
    StepRollouts,
    Verdict,
    load_verdict,
    read_rollouts,
    run_verdict,
    verdict_since,
)
from rlmt.report.figures import save_figure, short_cell_label  # noqa: E402
from rlmt.stats.correlation import pearson, spearman  # noqa: E402

# benchmarks whose headline is a win rate (0-100) against a reference: the Pareto view's y axis
WIN_RATE_BENCHMARKS = ("reward-winrate", "alpacaeval2", "arenahard-v2")
MAX_SCATTER_POINTS = 20_000  # a 500-step paper cell has ~500k rollouts: a seeded sample of them is drawn


@dataclass
class CellLength:
    """One cell's recorded rollouts and verdict (None: the run recorded none)."""

    cell: str
    algo: str
    steps: list[StepRollouts]
    verdict: Verdict | None
    since: int | None


def cell_lengths(plan) -> list[CellLength]:
    """Every cell's rollouts and verdict, read from its run directory (``plan.checkpoint_dir``)."""
    out = []
    for cell in plan.cells:
        run_dir = Path(plan.checkpoint_dir(cell.name))
        steps = read_rollouts(run_dir)
        verdict = load_verdict(run_dir)
        if verdict is None and steps and cell.algo != "dpo":  # a run cut off before its end: judge what it logged
            verdict = run_verdict(steps)
        since = verdict_since(steps) if verdict is not None and verdict.rule == "rl" and steps else None
        out.append(CellLength(cell.name, cell.algo, steps, verdict, since))
    return out


# ----------------------------------------------------------------------------- figures


def plot_reward_vs_length(cells: list[CellLength], out_dir: Path) -> list[Path]:
    """One scatter per cell with rollouts: reward against answer tokens, coloured by step."""
    written = []
    for c in cells:
        if not c.steps:
            continue
        step = np.concatenate([np.full(len(s), s.step) for s in c.steps])
        length = np.concatenate([np.asarray(s.answer_tokens, dtype=float) for s in c.steps])
        reward = np.concatenate([np.asarray(s.reward, dtype=float) for s in c.steps])
        if step.size > MAX_SCATTER_POINTS:
            keep = np.sort(np.random.default_rng(0).choice(step.size, MAX_SCATTER_POINTS, replace=False))
            step, length, reward = step[keep], length[keep], reward[keep]
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        points = ax.scatter(length, reward, c=step, cmap="viridis", s=9, alpha=0.6)
        if len(c.steps) > 1:
            fig.colorbar(points, ax=ax, label="training step")
        ax.set_xlabel("answer length (policy tokens)")
        ax.set_ylabel("reward")
        verdict = f" — {c.verdict.label}" if c.verdict else ""
        what = "samples its pairs came from" if c.algo == "dpo" else "rollouts"
        ax.set_title(f"{short_cell_label(c.cell)}{verdict}\nreward against answer length, {what}", fontsize=9)
        ax.grid(alpha=0.3)
        written.append(save_figure(fig, out_dir / f"length_reward_vs_answer__{_slug(c.cell)}.png", dpi=110))
    return written


def step_correlations(steps: list[StepRollouts]) -> list[tuple[int, float | None, float | None]]:
    """(step, Pearson, Spearman) of reward and answer tokens within each step (None where undefined)."""
    out = []
    for s in steps:
        if len(s) < 2:
            out.append((s.step, None, None))
            continue
        lengths = [float(t) for t in s.answer_tokens]
        out.append((s.step, pearson(s.reward, lengths), spearman(s.reward, lengths)))
    return out


def plot_length_correlation(cells: list[CellLength], out_dir: Path) -> list[Path]:
    """The reward-length correlation per step, one colour per cell (Spearman solid, Pearson dashed)."""
    series = {c.cell: step_correlations(c.steps) for c in cells if c.algo != "dpo" and len(c.steps) > 0}
    if not series:
        return []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    undefined = [cell for cell, points in series.items() if all(p is None and r is None for _, p, r in points)]
    if undefined:  # said on the figure rather than left out: a cell whose answers never vary in length is news
        ax.text(0.01, 0.02, "no correlation defined (constant reward or answer length in every step): "
                + ", ".join(short_cell_label(c) for c in sorted(undefined)), transform=ax.transAxes, fontsize=6, va="bottom")
    for i, (cell, points) in enumerate(sorted(series.items())):
        colour = f"C{i % 10}"
        spearman_xy = [(step, rho) for step, _, rho in points if rho is not None]
        pearson_xy = [(step, r) for step, r, _ in points if r is not None]
        for xy, style, label in ((spearman_xy, "-", "Spearman"), (pearson_xy, "--", "Pearson")):
            if xy:
                xs, ys = zip(*xy)
                ax.plot(xs, ys, style, color=colour, marker="o", markersize=3,
                        label=f"{short_cell_label(cell)} ({label})")
    ax.axhline(0, color="grey", lw=1)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("training step")
    ax.set_ylabel("correlation of reward with answer tokens")
    ax.set_title("reward–length correlation within each step's rollouts")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    return [save_figure(fig, out_dir / "length_correlation.png")]


def mean_answer_words(generations: Path) -> float | None:
    """Mean words of the extracted answers in a generations file (an unanswered row counts 0); None if absent."""
    if not generations.is_file():
        return None
    words = []
    for line in generations.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            words.append(len(str(row.get("answer") or "").split()))
    return float(np.mean(words)) if words else None


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point dominates (as short or shorter and as good or better, one of them strictly),
    by length: the best win rate reachable at each answer length."""
    front = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def plot_winrate_pareto(rows, benchmarks: list[str], eval_root: str | Path, out_dir: Path) -> list[Path]:
    """Per win-rate benchmark: each model's win rate (95 % CI) against its answers' mean length, Pareto front drawn."""
    written = []
    for bench in (b for b in WIN_RATE_BENCHMARKS if b in benchmarks):
        pts = []
        for r in rows:
            score = r.scores.get(bench)
            words = mean_answer_words(Path(eval_root) / r.model / bench / "generations.jsonl") if score else None
            if score and words is not None and score.get("value") is not None:
                pts.append((r, words, float(score["value"]), score.get("ci_low"), score.get("ci_high")))
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for r, x, y, lo, hi in pts:
            err = [[y - lo], [hi - y]] if lo is not None and hi is not None else None
            ax.errorbar(x, y, yerr=err, fmt="^" if r.think else "o", color="#4C72B0" if r.cell else "#DD8452",
                        capsize=2, markersize=5, alpha=0.85)
            ax.annotate(short_cell_label(r.model), (x, y), fontsize=5, xytext=(3, 3), textcoords="offset points")
        front = pareto_front([(x, y) for _, x, y, _, _ in pts])
        ax.plot(*zip(*front), "-", color="#C44E52", lw=1.2, label="Pareto front (no model shorter and better)")
        ax.set_xlabel(f"mean answer length on {bench} (words)")
        ax.set_ylabel(f"{bench} win rate (%)")
        ax.set_title(f"win rate against answer length, {bench} (blue: trained cells, orange: starting points; "
                     "triangles: thinking)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        written.append(save_figure(fig, out_dir / f"length_winrate_pareto__{_slug(bench)}.png"))
    return written


# ----------------------------------------------------------------------------- the verdict table


def verdict_rows(cells: list[CellLength]) -> list[dict[str, str]]:
    rows = []
    for c in cells:
        v = c.verdict
        rows.append({"cell": c.cell, "verdict": v.label if v else "no diagnostics recorded",
                     "since step": "–" if c.since is None else str(c.since),
                     "detail": v.summary() if v else "the run logged no rollouts (trained before rlmt.diagnostics?)"})
    return rows


def markdown(cells: list[CellLength]) -> list[str]:
    """The report's "Length diagnostics" section (Markdown lines)."""
    lines = ["## Length diagnostics", "",
             "Does the reward rise because the answers get longer? Per cell, the verdict saved at the end of training "
             "(also the MLflow tag `rlmt.length_verdict`) and the first step from which the verdict on the steps so "
             "far has read the same. Rollouts and verdicts: `results/checkpoints/<cell>/diagnostics/`.", "",
             f"- **GRPO and PPO rule.** {RL_RULE}", f"- **DPO rule (its pairs).** {DPO_RULE}", "",
             "| cell | verdict | since step | detail |", "|---|---|---|---|"]
    for row in verdict_rows(cells):
        lines.append(f"| {row['cell']} | {row['verdict']} | {row['since step']} | {row['detail']} |")
    return [*lines, ""]


def html_section(cells: list[CellLength]) -> str:
    """The same section as HTML."""
    esc = html.escape
    parts = ["<h2>Length diagnostics</h2>",
             "<p>Does the reward rise because the answers get longer? Per cell, the verdict saved at the end of "
             "training (also the MLflow tag <code>rlmt.length_verdict</code>) and the first step from which the "
             "verdict on the steps so far has read the same.</p>",
             f"<p><strong>GRPO and PPO rule.</strong> {esc(RL_RULE)}</p>",
             f"<p><strong>DPO rule (its pairs).</strong> {esc(DPO_RULE)}</p>",
             "<table><tr><th>cell</th><th>verdict</th><th>since step</th><th>detail</th></tr>"]
    for row in verdict_rows(cells):
        parts.append("<tr>" + "".join(f"<td style='text-align:left'>{esc(row[k])}</td>"
                                      for k in ("cell", "verdict", "since step", "detail")) + "</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label).strip("_").lower()
