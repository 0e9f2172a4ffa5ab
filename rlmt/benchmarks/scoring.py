"""The scoring stage: generations.jsonl -> scores.json, recorded as one MLflow run.

``rlmt eval score`` calls :func:`score_file`. It loads the benchmark's items (the same seeded
subset the generation stage used, given the same ``limit`` and ``seed``), scores the generations,
writes ``scores.json`` and ``per_item.jsonl`` next to it, and logs each metric with its CI bounds,
``n`` and ``n_failed`` plus a few sample outputs to the active MLflow run.

Generations for ids that are not items (a different limit, another benchmark's file) are an
error: scoring them against the wrong items would report a number that means nothing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlmt.benchmarks.base import BenchmarkError, BenchmarkResult, get_benchmark, read_generations, write_scores

N_SAMPLES = 8


def score_file(bench: str, generations_path: str | Path, out: str | Path, *, data_dir: Path | None = None,
               limit: int | None = None, seed: int = 0, options: dict[str, Any] | None = None,
               items_path: str | Path | None = None, **ctx: Any) -> BenchmarkResult:
    """Score one generations file; ``ctx`` is passed to ``Benchmark.score`` (e.g. a reward scorer).

    ``items_path``: the ``items.jsonl`` that ``rlmt eval items`` wrote and generation read, so
    the model is scored against exactly the items it was asked; without it the items are loaded
    from ``data_dir`` (same ``limit`` and ``seed`` give the same subset).
    """
    from rlmt.benchmarks.item_files import read_items

    benchmark = get_benchmark(bench, **(options or {}))
    items = read_items(items_path) if items_path else benchmark.load_items(data_dir, limit=limit, seed=seed)
    generations = read_generations(generations_path)
    item_ids = {item.id for item in items}
    stray = [gid for gid in generations if gid not in item_ids]
    if stray:
        raise BenchmarkError(f"{generations_path}: {len(stray)} generation id(s) are not {bench} items "
                             f"(limit={limit}, seed={seed}), e.g. {stray[:5]}")
    result = benchmark.score(items, generations, seed=seed, **ctx)
    out = Path(out)
    write_scores(result, out)
    per_item_path = out.with_name("per_item.jsonl")
    with per_item_path.open("w", encoding="utf-8") as fh:
        for score in result.per_item:
            fh.write(json.dumps(asdict(score), default=str) + "\n")
    _log_to_mlflow(result, out, per_item_path, generations)
    return result


def _log_to_mlflow(result: BenchmarkResult, scores_path: Path, per_item_path: Path,
                   generations: dict[str, dict]) -> None:
    """Metrics, CI, n, n_failed and sample outputs to the active run (no-op without one)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    metrics: dict[str, float] = {"n": result.n, "n_failed": result.n_failed}
    for name, metric in result.metrics.items():
        for suffix, value in (("", metric.value), ("_ci_low", metric.ci_low), ("_ci_high", metric.ci_high),
                              ("_n", metric.n)):
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[f"{name}{suffix}"] = float(value)
    mlflow.log_metrics(metrics)
    mlflow.log_artifact(str(scores_path))
    mlflow.log_artifact(str(per_item_path))
    samples = []
    for score in result.per_item[:N_SAMPLES]:
        row = generations.get(score.id) or {}
        samples.append({"id": score.id, "value": score.value, "answer": (row.get("answer") or "")[:2000],
                        "answer_found": row.get("answer_found"), "details": score.details})
    mlflow.log_dict({"samples": samples}, "sample_outputs.json")
