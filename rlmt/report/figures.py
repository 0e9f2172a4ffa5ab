"""Figures of the report: training curves per cell (from MLflow, the record) and benchmark bars.

The length diagnostics' figures (reward against answer length, its correlation per step, win rate against
answer length) are :mod:`rlmt.report.length_figures`.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import polars as pl  # noqa: E402

# Curves drawn per cell, each from one metric: the diag/* vocabulary every trainer logs (rlmt.diagnostics; DPO
# logs it once, at step 0, over the samples its pairs come from) and DPO's own margin (TRL's). Runs logged before
# that vocabulary (answer/..., response/..., reward/mean) draw no curves.
CURVES = {
    "reward": "diag/reward_mean",
    "kl": "diag/kl",
    "completion_length": "diag/completion_tokens_mean",
    "answer_length": "diag/answer_tokens_mean",
    "thought_length": "diag/thought_tokens_mean",
    "clipped_share": "diag/clipped_share",
    # the share of rollouts that break the thinking format (rlmt.thinking.extract): a policy drifting into a
    # degenerate layout the reward still pays for (e.g. looping on its thought after answering) shows here first
    "malformed_fraction": "diag/malformed_share",
    "dpo_margin": "rewards/margins",
}


def training_histories(cells: list[str], *, uri: str | None = None, experiment: str = "rlmt") -> dict[str, dict[str, list]]:
    """cell -> curve -> [(step, value)] from each cell's latest finished training run."""
    from mlflow.tracking import MlflowClient

    from rlmt.tracking import TAG_CELL, TAG_RULE, tracking_uri

    client = MlflowClient(tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, dict[str, list]] = {}
    if exp is None:
        return out
    for cell in cells:
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_CELL}` = '{cell}' and "
                                  f"tags.`{TAG_RULE}` = 'train' and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            continue
        run = runs[0]
        curves = {}
        for curve, name in CURVES.items():
            if name in run.data.metrics:
                hist = client.get_metric_history(run.info.run_id, name)
                curves[curve] = sorted((m.step, m.value) for m in hist)
        out[cell] = curves
    return out


def plot_training_curves(histories: dict[str, dict[str, list]], out_dir: Path) -> list[Path]:
    """One PNG per curve kind, one line per cell."""
    written = []
    for curve in CURVES:
        series = {c: h[curve] for c, h in histories.items() if h.get(curve)}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for cell, points in sorted(series.items()):
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o", markersize=3, label=short_cell_label(cell))
        ax.set_xlabel("training step")
        ax.set_ylabel(curve.replace("_", " "))
        ax.set_title(f"{curve.replace('_', ' ')} over training")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        written.append(save_figure(fig, out_dir / f"train_{curve}.png"))
    return written


def plot_benchmark_bars(table: pl.DataFrame, benchmarks: list[str], out_dir: Path) -> list[Path]:
    """Grouped bars per benchmark column: one bar per model, thinking models hatched."""
    written = []
    for label in benchmarks:
        if label not in table.columns:
            continue
        sub = table.select("model", "think", label).drop_nulls(label)
        if sub.is_empty():
            continue
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * sub.height + 2), 4.5))
        values = [v for v in sub[label]]
        bars = ax.bar(range(sub.height), values, color=["#4C72B0" if t == "✓" else "#DD8452" for t in sub["think"]])
        for bar, t in zip(bars, sub["think"]):
            if t == "✓":
                bar.set_hatch("//")
        ax.set_xticks(range(sub.height), [short_cell_label(m) for m in sub["model"]], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.set_title(f"{label} by model (hatched/blue: thinking)")
        ax.grid(axis="y", alpha=0.3)
        written.append(save_figure(fig, out_dir / f"bench_{_slug(label)}.png"))
    return written


def plot_deltas(deltas: pl.DataFrame, out_dir: Path) -> list[Path]:
    """Think minus nothink per benchmark with paired-bootstrap 95 % CIs."""
    if deltas.is_empty():
        return []
    fig, ax = plt.subplots(figsize=(8, max(3, 0.35 * deltas.height + 1)))
    labels = [f"{r['backbone']} {r['stage']} · {r['benchmark']}" for r in deltas.iter_rows(named=True)]
    d = deltas["delta"].to_list()
    lo = [x if x is not None else math.nan for x in deltas["ci_low"].to_list()]
    hi = [x if x is not None else math.nan for x in deltas["ci_high"].to_list()]
    err = [[0 if math.isnan(a) else v - a for v, a in zip(d, lo)], [0 if math.isnan(b) else b - v for v, b in zip(d, hi)]]
    ax.errorbar(d, range(len(d)), xerr=err, fmt="o", color="#4C72B0", capsize=3)
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(d)), labels, fontsize=7)
    ax.set_xlabel("think − nothink (points, 95 % paired bootstrap CI)")
    ax.set_title("Does thinking help?")
    return [save_figure(fig, out_dir / "think_deltas.png")]


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Lay `fig` out, write it to `path` and close it (every report figure ends so)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def short_cell_label(name: str) -> str:
    """A cell or model name as a figure label: the default start and the separators dropped."""
    return name.replace("__warm-start", "").replace("__", " ")


def _slug(label: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in label).strip("_").lower()
