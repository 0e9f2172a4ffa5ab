"""Every number of the report's main table and think-minus-nothink table is what the score files say.

Score files of the embedded default's grid (13 cells plus the 4 SFT starting points, think and
nothink of each) are written with known per-item values, collected by the real collect step, and
the real report is built from them. The expected numbers are computed here, from the per-benchmark
``scores.json`` and ``per_item.jsonl`` files alone, by the definitions the report states: a
benchmark column is the headline value, AvgChat the mean of WB, AE2 and AH2 when a row has all
three, Avg the mean over the paper's seven main benchmarks a row has (else over every benchmark it
has), and a delta the mean paired per-item difference (a failed item counts 0) in points, with a
seeded percentile bootstrap CI over the paired items.

The reward win rate's files also carry the both-answered and length-controlled rates and per-item rewards,
word counts and answer digests: the main table's ``RM-WR both`` and ``RM-WR LC`` columns are the file's
``win_rate_both_answered`` and ``lc_win_rate``; the think-minus-nothink
table's ``RM-WR LC`` rows and the head-to-head table (each think cell against its no-think twin) are
recomputed here from the per-item files by the stated rules. LC point values come from an independent
solver (tests/test_length_controlled_winrate.py's); their bootstrap CIs from ``rlmt.stats.length_control``
(checked against that solver there) applied to arrays this test builds, so what is checked here is which
prompts are paired and how.
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


def _winrate_details(value: float | None, rng: random.Random) -> dict:
    """Per-item details as reward-winrate writes them: no answer (failed, or neither answered) or an answer's
    reward, both answers' word counts and the answer's digest (a small set, so twins sometimes share one)."""
    if value is None:
        return {"reason": "thought-never-ended"}
    if value == 0.5 and rng.random() < 0.25:
        return {"policy_reward": None, "reference_reward": None, "neither_answered": True}
    return {"policy_reward": rng.choice([-1.0, 0.0, 0.2, 0.5, 1.0]), "reference_reward": 0.0,
            "policy_words": rng.randint(1, 60), "reference_words": rng.randint(1, 60),
            "policy_answer_digest": rng.choice(["d1", "d2", "d3", "d4", "d5", "d6"])}


def _write_bench_scores(path: Path, bench: str, rng: random.Random, *, drop_item: bool, tie_tolerance: float = 1e-4) -> None:
    ids = [f"{bench}-{k}" for k in range(N_ITEMS) if not (drop_item and k == 3)]
    items = [{"id": i, "value": _item_value(bench, rng), "details": {}} for i in ids]
    if bench == "reward-winrate":
        for it in items:
            it["details"] = _winrate_details(it["value"], rng)
    mean = sum(it["value"] or 0.0 for it in items) / len(items)
    value = ITEM_SCALE[bench] * mean
    if bench == "alpacaeval2":
        value += 2.5  # its headline is the length-controlled win rate, not the items' plain mean
    lo, hi = value - rng.uniform(1, 9), value + rng.uniform(1, 9)
    metrics = {"score": {"value": value, "ci_low": lo, "ci_high": hi, "n": len(items)}}
    extra = {}
    if bench == "reward-winrate":
        for name in ("win_rate_both_answered", "lc_win_rate"):
            v = rng.uniform(20, 80)
            metrics[name] = {"value": v, "ci_low": v - rng.uniform(1, 9), "ci_high": v + rng.uniform(1, 9), "n": 5}
        extra = {"tie_tolerance": tie_tolerance}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": bench, "protocol": "paper", "metric_version": "1", "n": len(items),
                                "n_failed": sum(it["value"] is None for it in items),
                                "metrics": metrics, "extra": extra}))
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
    assert len(scored) == 17  # 13 cells + 4 SFT starting points
    files: dict[str, dict[str, Path]] = {}
    for k, model in enumerate(scored):
        benches = [b for b in LABELS if not (k == 5 and b == "arenahard-v2")]  # one row lacks AH2
        files[model] = {b: Path(plan.scores_file(model, b)) for b in benches}
        for b, path in files[model].items():  # some nothink rows lack an item; some cells tie rewards within 0.25
            _write_bench_scores(path, b, rng, drop_item=k % 4 == 1, tie_tolerance=0.25 if k % 3 == 0 else 1e-4)
        cell = model if model in plan.cell_by_name else None
        collect_model_scores(CollectConfig(model=model, cell=cell), list(files[model].values()), plan.scores_file(model))
    out = work / "report"
    build_report(plan, ReportConfig(out_dir=str(out), eval_root=str(work / "results/eval"),
                                    tracking_uri=f"sqlite:///{work / 'mlruns.db'}"))
    return {"out": out, "files": files, "uri": f"sqlite:///{work / 'mlruns.db'}"}


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


def _item_rows(path: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in path.with_name("per_item.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


def _lc(y, d) -> float:
    from test_length_controlled_winrate import _independent_lc

    return _independent_lc(y, d)


def _lc_arrays(rows: dict[str, dict], ids: list[str]) -> tuple[list[float], list[float]]:
    """A cell's outcomes against its reference (NaN where not both answered) and word differences, over ids."""
    ys, ds = [], []
    for i in ids:
        det = rows[i]["details"]
        ok = rows[i]["value"] is not None and det.get("policy_words") is not None and det.get("reference_words") is not None
        ys.append(float(rows[i]["value"]) if ok else math.nan)
        ds.append(float(det["policy_words"] - det["reference_words"]) if ok else 0.0)
    return ys, ds


def _describe(model: str) -> tuple[str, str, str, bool]:
    """(backbone, start, stage, think) read off a model's name."""
    parts = model.split("__")
    if len(parts) == 6:  # a cell: algo__base__start__think__rm__mixture; a reward other than the first cell's is named
        stage = {"grpo": "+ GRPO", "ppo": "+ PPO", "dpo": "+ DPO"}[parts[0]]
        return parts[1], parts[2], stage + ("" if parts[4] == "tiny-rm" else f" ({parts[4]})"), parts[3] == "think"
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
        # beside the raw win rate: the file's both-answered and length-controlled rates, not in any average
        for column, name in (("RM-WR both", "win_rate_both_answered"), ("RM-WR LC", "lc_win_rate")):
            m = json.loads(files["reward-winrate"].read_text())["metrics"][name]
            assert _num(row[column]) == pytest.approx(m["value"], rel=1e-12, abs=1e-12), (model, column)
            assert row[f"{column} CI"] == f"[{m['ci_low']:.1f}, {m['ci_high']:.1f}]", (model, column)
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
    checked_ci: list[tuple] = []
    for key, pair in by_key.items():
        if set(pair) != {True, False}:  # a cell without a no-think twin (the debiased-reward one) has no delta row
            assert key[2] == "+ GRPO (tiny-rm-odin)" and set(pair) == {True}, (key, pair)
            continue
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
            if bench == "reward-winrate":  # the LC row: think's LC minus nothink's, each over its both-answered items
                from rlmt.stats.length_control import paired_lc_difference

                t_rows, n_rows = _item_rows(t_files[bench]), _item_rows(n_files[bench])
                (ya, da), (yb, db) = _lc_arrays(t_rows, common), _lc_arrays(n_rows, common)
                keep_a, keep_b = ~np.isnan(ya), ~np.isnan(yb)
                delta = (_lc(np.array(ya)[keep_a], np.array(da)[keep_a]) - _lc(np.array(yb)[keep_b], np.array(db)[keep_b]))
                # the CI of two pairs (a cell pair and a starting-point pair; 4,000 fits each): None = not recomputed
                lo = hi = None
                if len(checked_ci) < 2 and (key[2] == "+ SFT") not in [k[2] == "+ SFT" for k in checked_ci]:
                    _, lo, hi = paired_lc_difference(ya, da, yb, db)
                    checked_ci.append(key)
                t_lc = json.loads(t_files[bench].read_text())["metrics"]["lc_win_rate"]["value"]
                n_lc = json.loads(n_files[bench].read_text())["metrics"]["lc_win_rate"]["value"]
                expected[(*key, "RM-WR LC")] = {"think": t_lc, "nothink": n_lc, "delta": delta, "ci_low": lo,
                                                "ci_high": hi, "n_paired": len(common)}
    rows = _csv(report["out"] / "think_deltas.csv")
    got = {(r["backbone"], r["start"], r["stage"], r["benchmark"]): r for r in rows}
    assert set(got) == set(expected) and len(rows) == len(expected) == 8 * 6 - 1
    assert any(e["n_paired"] == N_ITEMS - 1 for e in expected.values())  # pairs where one side lacks an item
    assert len(checked_ci) == 2
    for key, e in expected.items():
        row = got[key]
        assert int(row["n_paired"]) == e["n_paired"], key
        for column in ("think", "nothink", "delta", "ci_low", "ci_high"):
            if e[column] is None:  # an LC interval not recomputed here: a finite interval
                assert _num(row["ci_low"]) <= _num(row["ci_high"]), key
                continue
            # LC deltas: 1e-4 points (the independent solver's precision); the rest exact to 1e-9
            tol = 1e-4 if key[-1].endswith(" LC") and column == "delta" else 1e-9
            assert _num(row[column]) == pytest.approx(e[column], rel=tol, abs=tol), (key, column)
        assert math.isfinite(e["delta"])
    md = (report["out"] / "report.md").read_text()
    for key, e in expected.items():  # the report's delta table shows the same numbers, one decimal
        assert f"| {' | '.join(key)} | {e['think']:.1f} | {e['nothink']:.1f} | {e['delta']:.1f} |" in md, key


def _twins(models) -> list[tuple[str, str]]:
    """(think cell, no-think cell) pairs read off the names: the same algo, base, start, rm and mixture."""
    cells = [m for m in models if len(m.split("__")) == 6]
    pairs = []
    for m in cells:
        parts = m.split("__")
        if parts[3] == "think":
            twin = "__".join([*parts[:3], "nothink", *parts[4:]])
            if twin in cells:
                pairs.append((m, twin))
    return pairs


def _outcome(t: dict, n: dict, tol: float) -> float:
    """Think over no-think on one prompt, by the stated rule (the reward win rate's, with digests for identical answers)."""
    tr, nr = t["details"].get("policy_reward"), n["details"].get("policy_reward")
    if tr is None or nr is None:
        return 0.5 if tr is None and nr is None else (0.0 if tr is None else 1.0)
    if t["details"]["policy_answer_digest"] == n["details"]["policy_answer_digest"]:
        return 0.5
    return 1.0 if tr - nr > tol else (0.0 if tr - nr < -tol else 0.5)


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """The seeded percentile bootstrap of a mean, as stated: default_rng(0), (2000, n) draws, 2.5/97.5 %."""
    v = np.array(values)
    if v.min() == v.max():
        return float(v[0]), float(v[0])
    means = v[np.random.default_rng(0).integers(0, v.size, size=(2000, v.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def test_head_to_head_pairs_each_think_cell_with_its_nothink_twin(report):
    from mlflow.tracking import MlflowClient

    from rlmt.stats.length_control import lc_bootstrap_ci

    pairs = _twins(report["files"])
    assert len(pairs) == 6  # the default grid: 3 algorithms x 2 bases, each with both think settings
    rows = {r["think_cell"]: r for r in _csv(report["out"] / "head_to_head.csv")}
    assert sorted(rows) == sorted(t for t, _ in pairs)
    html = (report["out"] / "report.html").read_text()
    section = html.split("<h2>Think versus no-think, head to head</h2>")[1].split("</table>")[0]
    md = (report["out"] / "report.md").read_text()
    client = MlflowClient(report["uri"])
    exp_id = client.get_experiment_by_name("rlmt").experiment_id
    saw_tie_rule = saw_digest_tie = False
    for think, nothink in pairs:
        row = rows[think]
        assert row["nothink_cell"] == nothink
        t_path, n_path = report["files"][think]["reward-winrate"], report["files"][nothink]["reward-winrate"]
        tol = max(json.loads(p.read_text())["extra"]["tie_tolerance"] for p in (t_path, n_path))
        t_rows, n_rows = _item_rows(t_path), _item_rows(n_path)
        common = sorted(set(t_rows) & set(n_rows))
        outcomes = [_outcome(t_rows[i], n_rows[i], tol) for i in common]
        lo, hi = _mean_ci(outcomes)
        assert int(row["n_paired"]) == len(common) and float(row["tie_tolerance"]) == tol
        assert _num(row["win_rate"]) == pytest.approx(100 * sum(outcomes) / len(outcomes), rel=1e-12, abs=1e-12)
        assert (_num(row["ci_low"]), _num(row["ci_high"])) == pytest.approx((100 * lo, 100 * hi), abs=1e-9)
        assert int(row["n_ties"]) == outcomes.count(0.5)
        answered = [i for i in common if t_rows[i]["details"].get("policy_reward") is not None
                    and n_rows[i]["details"].get("policy_reward") is not None]
        y = [_outcome(t_rows[i], n_rows[i], tol) for i in answered]
        d = [t_rows[i]["details"]["policy_words"] - n_rows[i]["details"]["policy_words"] for i in answered]
        assert int(row["n_both_answered"]) == len(answered)
        if answered:  # LC point: 1e-4 points (the independent solver's precision); CI: the stats module on these arrays
            assert _num(row["lc_win_rate"]) == pytest.approx(_lc(y, d), abs=1e-4), think
            assert (_num(row["lc_ci_low"]), _num(row["lc_ci_high"])) == pytest.approx(lc_bootstrap_ci(y, d), abs=1e-9)
            assert _num(row["mean_word_difference"]) == pytest.approx(sum(d) / len(d), abs=1e-12)
        saw_tie_rule |= tol == 0.25 and any(abs(t_rows[i]["details"]["policy_reward"] - n_rows[i]["details"]["policy_reward"]) == 0.2
                                            for i in answered)
        saw_digest_tie |= any(t_rows[i]["details"]["policy_answer_digest"] == n_rows[i]["details"]["policy_answer_digest"]
                              for i in answered)
        # report.md shows the row; report.html links its numbers to the think cell's parent run, which holds them
        assert f"| {think} | {nothink} | {len(common)} | {100 * sum(outcomes) / len(outcomes):.1f} |" in md, think
        parent = client.search_runs([exp_id], filter_string=f"tags.`rlmt.cell` = '{think}' and tags.`rlmt.is_parent` = 'true'")[0]
        link = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{parent.info.run_id}"
        assert f"<td><a href='{link}'>{100 * sum(outcomes) / len(outcomes):.1f}</a></td>" in section, think
        assert parent.data.metrics["think_vs_nothink.win_rate"] == pytest.approx(_num(row["win_rate"]), rel=1e-12)
        if answered:
            assert parent.data.metrics["think_vs_nothink.lc_win_rate"] == pytest.approx(_num(row["lc_win_rate"]), rel=1e-12)
    assert saw_tie_rule and saw_digest_tie  # the synthetic files exercise both tie rules
