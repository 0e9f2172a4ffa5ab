"""The judging stage: generations.jsonl -> judgments.jsonl + scores.json, for one judged benchmark.

Kept apart from generation on purpose: a model is generated where the GPU is (maybe offline) and
judged later where the judge endpoint is reachable. Rerunning is cheap: replies come from the
cache, so only missing or failed judgments are requested again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlmt.benchmarks.base import BenchmarkError, BenchmarkResult, get_benchmark, read_generations, write_scores


def pick_judge(cfg, name: str | None, bench_options: dict | None = None):
    """(name, JudgeSpec): the named judge, the benchmark's ``judge`` option, or the only one configured."""
    judges = cfg.evaluation.judges
    name = name or (bench_options or {}).get("judge")
    if name is None:
        if len(judges) != 1:
            raise BenchmarkError("choose a judge with --judge; configured: "
                                 f"{sorted(judges) if judges else 'none (add one under evaluation.judges)'}")
        name = next(iter(judges))
    if name not in judges:
        raise BenchmarkError(f"unknown judge {name!r}; configured under evaluation.judges: {sorted(judges)}")
    return name, judges[name]


def judge_benchmark(bench: str, generations_path: str | Path, judgments_out: str | Path, scores_out: str | Path,
                    judge, *, data_dir: Path | None = None, options: dict[str, Any] | None = None,
                    protocol: str | None = None, limit: int | None = None, seed: int = 0,
                    items_path: str | Path | None = None) -> BenchmarkResult:
    """Judge one benchmark's generations with ``judge`` (see :func:`rlmt.judges.client.make_judge`).

    ``items_path`` (an items.jsonl from ``rlmt eval items``) replaces loading the benchmark's data,
    so the judged items are exactly the generated ones.
    """
    options = {k: v for k, v in (options or {}).items() if k != "judge"}
    if data_dir is not None:
        options.setdefault("data_dir", str(data_dir))
    benchmark = get_benchmark(bench, **options)
    if not hasattr(benchmark, "judge_all"):
        raise BenchmarkError(f"{bench} is not an LLM-judged benchmark; score it with `rlmt eval score`")
    if items_path is not None:
        from rlmt.benchmarks.item_files import read_items

        items = read_items(items_path)
    else:
        items = benchmark.load_items(data_dir, limit=limit, seed=seed)
    generations = read_generations(generations_path)
    ids = {it.id for it in items}
    stray = sorted(set(generations) - ids)
    if generations and len(stray) == len(generations):
        raise BenchmarkError(f"{generations_path}: none of its ids are {bench} items (first: {stray[:3]})")
    result, rows = benchmark.judge_all(items, generations, judge, protocol)
    result.extra["judge"] = {**judge.describe(), "usage": judge.usage.to_dict()}
    if stray:
        result.extra["ignored_generation_ids"] = len(stray)
    judgments_out = Path(judgments_out)
    judgments_out.parent.mkdir(parents=True, exist_ok=True)
    with judgments_out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_scores(result, scores_out)
    return result
