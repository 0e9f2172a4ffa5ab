"""Collect one model's benchmark scores into ``results/eval/<model>/scores.json``.

This file is a cell's Snakemake target: it exists once every benchmark of the model is scored.
It holds, per benchmark, the headline metric (``metrics["score"]`` by the protocol's convention)
with its CI, n and n_failed, plus where each number came from (the scores file and its digest),
and it is logged as the cell's ``collect`` run in MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlmt.tracking import digest

PER_ITEM_FILE = "per_item.jsonl"


@dataclass
class CollectConfig:
    model: str
    cell: str | None = None
    checkpoint: str | None = None


def headline(scores: dict) -> tuple[str, dict]:
    """The (name, metric) shown in tables: 'score' if present, else the first metric."""
    metrics = scores.get("metrics", {})
    if not metrics:
        raise ValueError(f"scores of {scores.get('benchmark')!r} hold no metrics")
    name = "score" if "score" in metrics else next(iter(metrics))
    return name, metrics[name]


def collect_model_scores(cfg: CollectConfig, score_files: list[str | Path], out: str | Path) -> dict:
    """Merge per-benchmark scores.json files into one document and write it to `out`."""
    benchmarks: dict[str, dict] = {}
    for path in map(Path, score_files):
        scores = json.loads(path.read_text())
        bench = scores.get("benchmark") or path.parent.name
        name, metric = headline(scores)
        benchmarks[bench] = {
            "metric": name,
            "value": metric["value"],
            "ci_low": metric.get("ci_low"),
            "ci_high": metric.get("ci_high"),
            "n": scores.get("n"),
            "n_failed": scores.get("n_failed"),
            "protocol": scores.get("protocol"),
            "metric_version": scores.get("metric_version"),
            "all_metrics": scores.get("metrics", {}),
            "source": str(path),
            "digest": digest(path)[:16],
            "per_item": str(path.parent / PER_ITEM_FILE) if (path.parent / PER_ITEM_FILE).exists() else None,
        }
    doc = {"model": cfg.model, "cell": cfg.cell, "checkpoint": cfg.checkpoint, "benchmarks": benchmarks}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def log_collected(doc: dict, model_id: str | None = None) -> None:
    """Log each headline number (and its CI) as metrics of the active MLflow run.

    With `model_id` (the evaluated checkpoint's logged model, :func:`rlmt.tracking.log_checkpoint_model`)
    the same metrics are linked to that model too: its page lists the scores it got.
    """
    import mlflow

    for bench, b in doc["benchmarks"].items():
        key = bench.replace("-", "_")
        mlflow.log_metric(f"{key}.score", b["value"], model_id=model_id)
        if b.get("ci_low") is not None:
            mlflow.log_metric(f"{key}.ci_low", b["ci_low"], model_id=model_id)
            mlflow.log_metric(f"{key}.ci_high", b["ci_high"], model_id=model_id)
        if b.get("n_failed") is not None:
            mlflow.log_metric(f"{key}.n_failed", b["n_failed"], model_id=model_id)
