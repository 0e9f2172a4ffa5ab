"""Every number of the report's main table and think-minus-nothink table is what the score files say.

Score files of the embedded default's grid (12 cells plus the 4 SFT starting points, think and
nothink of each) are written with known per-item values, collected by the real collect step, and
the real report is built from them. The expected numbers are computed here, from the per-benchmark
``scores.json`` and ``per_item.jsonl`` files alone, by the definitions the report states: a
benchmark column is the headline value, AvgChat the mean of WB, AE2 and AH2 when a row has all
three, Avg the mean over the paper's seven main benchmarks a row has (else over every benchmark it
has), and a delta the mean paired per-item difference (a failed item counts 0) in points, with a
seeded percentile bootstrap CI over the paired items.
"""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LABELS = {"wildbench": "WB", "alpacaeval2": "AE2", "arenahard-v2": "AH2", "demo-if": "DemoIF", "reward-winrate": "RM-WR"}
CHAT = ("wildbench", "alpacaeval2", "arenahard-v2")
MAIN7 = ("wildbench", "alpacaeval2", "arenahard-v2", "creative-writing-v3", "popqa", "ifbench", "mmlu-redux")
# points per unit of a per-item value: WildBench's items are already in points (-100..100), the others are 0..1
ITEM_SCALE = {"wildbench": 1.0, "alpacaeval2": 100.0, "arenahard-v2": 100.0, "demo-if": 100.0, "reward-winrate": 100.0}
N_ITEMS = 7


def _item_value(bench: str, rng: random.Random) -> float | None:
    if rng.random() < 0.15:
        return None  # failed
    if bench == "wildbench":
        return rng.choice([-100.0, -50.0, 0.0, 50.0, 100.0])
    if bench == "reward-winrate":
        return rng.choice([0.0, 0.5, 1.0])
    if bench == "demo-if":
        return rng.choice([0.0, 1.0])
    return round(rng.random(), 4)


def _write_bench_scores(path: Path, bench: str, rng: random.Random, *, drop_item: bool) -> None:
    ids = [f"{bench}-{k}" for k in range(N_ITEMS) if not (drop_item and k == 3)]
    items = [{"id": i, "value": _item_value(bench, rng), "details": {}} for i in ids]
    mean = sum(it["value"] or 0.0 for it in items) / len(items)
    value = ITEM_SCALE[bench] * mean
    if bench == "alpacaeval2":
        value += 2.5  # its headline is the length-controlled win rate, not the items' plain mean
    lo, hi = value - rng.uniform(1, 9), value + rng.uniform(1, 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": bench, "protocol": "paper", "metric_version": "1", "n": len(items),
                                "n_failed": sum(it["value"] is None for it in items),
                                "metrics": {"score": {"value": value, "ci_low": lo, "ci_high": hi, "n": len(items)}},
                                "extra": {}}))
    path.with_name("per_item.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from rlmt.config import parse_config
    from rlmt.report.build import ReportConfig, build_report
    from rlmt.report.collect import CollectConfig, collect_model_scores
    from rlmt.workflow import Plan

    work = tmp_path_factory.mktemp("report")
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["evaluation"]["evaluate_initial"] = True
    raw["evaluation"]["benchmarks"] = {b: {"limit": N_ITEMS} for b in LABELS}
    plan = Plan(parse_config(raw), root=str(work / "results"))
    rng = random.Random(13)
    scored = [m for m in plan.eval_models if plan.benchmarks_for(m)]
    assert len(scored) == 16  # 12 cells + 4 SFT starting points
    files: dict[str, dict[str, Path]] = {}
    for k, model in enumerate(scored):
        benches = [b for b in LABELS if not (k == 5 and b == "arenahard-v2")]  # one row lacks AH2
        files[model] = {b: Path(plan.scores_file(model, b)) for b in benches}
        for b, path in files[model].items():
            _write_bench_scores(path, b, rng, drop_item=k % 4 == 1)  # some nothink rows lack an item
        cell = model if model in plan.cell_by_name else None
        collect_model_scores(CollectConfig(model=model, cell=cell), list(files[model].values()), plan.scores_file(model))
    out = work / "report"
    build_report(plan, ReportConfig(out_dir=str(out), eval_root=str(work / "results/eval"),
                                    tracking_uri=f"sqlite:///{work / 'mlruns.db'}"))
    return {"out": out, "files": files}


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _num(text: str) -> float | None:
    return None if text in ("", "null") else float(text)


def _headline(path: Path) -> dict:
    return json.loads(path.read_text())["metrics"]["score"]


def _per_item(path: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in path.with_name("per_item.jsonl").read_text().splitlines()]
    return {r["id"]: 0.0 if r["value"] is None else float(r["value"]) for r in rows}


def _describe(model: str) -> tuple[str, str, str, bool]:
    """(backbone, start, stage, think) read off a model's name."""
    parts = model.split("__")
    if len(parts) == 6:  # a cell: algo__base__start__think__rm__mixture
        return parts[1], parts[2], {"grpo": "+ GRPO", "ppo": "+ PPO", "dpo": "+ DPO"}[parts[0]], parts[3] == "think"
    assert parts[1] == "sft", model  # an SFT starting point: base__sft__think__sft-data
    return parts[0], "warm-start", "+ SFT", parts[2] == "think"


def test_every_main_table_number_is_the_score_files(report):
    rows = _csv(report["out"] / "main_table.csv")
    assert sorted(r["model"] for r in rows) == sorted(report["files"])  # every scored model once
    for row in rows:
        model = row["model"]
        backbone, start, stage, think = _describe(model)
        assert (row["backbone"], row["start"], row["stage"], row["think"]) == (backbone, start, stage, "✓" if think else "✗")
        files = report["files"][model]
        values = {}
        for bench, label in LABELS.items():
            if bench not in files:
                assert _num(row[label]) is None and row[f"{label} CI"] == "", (model, label)
                continue
            s = _headline(files[bench])
            values[bench] = s["value"]
            assert _num(row[label]) == pytest.approx(s["value"], rel=1e-12, abs=1e-12), (model, label)
            assert row[f"{label} CI"] == f"[{s['ci_low']:.1f}, {s['ci_high']:.1f}]", (model, label)
        chat = [values[b] for b in CHAT if b in values]
        if len(chat) == 3:
            assert _num(row["AvgChat"]) == pytest.approx(sum(chat) / 3, rel=1e-12, abs=1e-12), model
        else:
            assert _num(row["AvgChat"]) is None, model
        over = [b for b in MAIN7 if b in values] or list(values)
        assert _num(row["Avg"]) == pytest.approx(sum(values[b] for b in over) / len(over), rel=1e-12, abs=1e-12)
        assert row["avg_over"].split(",") == [LABELS[b] for b in over]


def test_every_think_delta_is_the_paired_item_difference_of_the_score_files(report):
    by_key: dict[tuple, dict[bool, str]] = {}
    for model in report["files"]:
        backbone, start, stage, think = _describe(model)
        by_key.setdefault((backbone, start, stage), {})[think] = model
    expected = {}
    for key, pair in by_key.items():
        assert set(pair) == {True, False}
        t_files, n_files = report["files"][pair[True]], report["files"][pair[False]]
        for bench, label in LABELS.items():
            if bench not in t_files or bench not in n_files:
                continue
            t_items, n_items = _per_item(t_files[bench]), _per_item(n_files[bench])
            common = sorted(set(t_items) & set(n_items))
            d = np.array([t_items[i] - n_items[i] for i in common])
            means = d[np.random.default_rng(0).integers(0, d.size, size=(2000, d.size))].mean(axis=1)
            scale = ITEM_SCALE[bench]
            expected[(*key, label)] = {
                "think": _headline(t_files[bench])["value"], "nothink": _headline(n_files[bench])["value"],
                "delta": scale * d.mean(), "ci_low": scale * np.quantile(means, 0.025),
                "ci_high": scale * np.quantile(means, 0.975), "n_paired": len(common)}
    rows = _csv(report["out"] / "think_deltas.csv")
    got = {(r["backbone"], r["start"], r["stage"], r["benchmark"]): r for r in rows}
    assert set(got) == set(expected) and len(rows) == len(expected) == 8 * 5 - 1
    assert any(e["n_paired"] == N_ITEMS - 1 for e in expected.values())  # pairs where one side lacks an item
    for key, e in expected.items():
        row = got[key]
        assert int(row["n_paired"]) == e["n_paired"], key
        for column in ("think", "nothink", "delta", "ci_low", "ci_high"):
            assert _num(row[column]) == pytest.approx(e[column], rel=1e-9, abs=1e-9), (key, column)
        assert math.isfinite(e["delta"])
    md = (report["out"] / "report.md").read_text()
    for key, e in expected.items():  # the report's delta table shows the same numbers, one decimal
        assert f"| {' | '.join(key)} | {e['think']:.1f} | {e['nothink']:.1f} | {e['delta']:.1f} |" in md, key
