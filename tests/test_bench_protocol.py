"""The shared benchmark protocol: registry, bootstrap CI, scores.json, generations I/O, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlmt.benchmarks import BENCHMARKS, get_benchmark
from rlmt.benchmarks.base import (
    BenchmarkError,
    BenchmarkResult,
    ItemScore,
    Metric,
    bootstrap_ci,
    limit_items,
    read_generations,
    write_scores,
)
from rlmt.config import KNOWN_BENCHMARKS

FIXTURES = Path(__file__).parent / "fixtures"
RULE_BASED = {"demo-if", "reward-winrate", "ifeval", "ifbench", "mmlu-redux", "math-500", "zebralogic", "popqa"}


def test_registry_names_are_the_configs_names():
    assert RULE_BASED <= set(BENCHMARKS)
    assert set(BENCHMARKS) <= KNOWN_BENCHMARKS
    with pytest.raises(BenchmarkError, match="unknown benchmark 'nope'"):
        get_benchmark("nope")


def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    values = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(values)
    assert lo < 0.3 < hi and 0.18 < lo and hi < 0.42
    assert bootstrap_ci(values) == (lo, hi)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    wide, narrow = bootstrap_ci([0.0, 1.0] * 5), bootstrap_ci([0.0, 1.0] * 500)
    assert wide[1] - wide[0] > 3 * (narrow[1] - narrow[0])


def test_write_scores_is_strict_json(tmp_path):
    result = BenchmarkResult("popqa", {"score": Metric(50.0, 10.0, 90.0, 4), "empty": Metric(float("nan"), None, None, 0)},
                             n=4, n_failed=1, per_item=[ItemScore("a", 1.0, {})], extra={"k": 1})
    write_scores(result, tmp_path / "x" / "scores.json")
    doc = json.loads((tmp_path / "x" / "scores.json").read_text())
    assert doc == {"benchmark": "popqa", "protocol": "paper", "metric_version": "1", "n": 4, "n_failed": 1,
                   "metrics": {"score": {"value": 50.0, "ci_low": 10.0, "ci_high": 90.0, "n": 4},
                               "empty": {"value": None, "ci_low": None, "ci_high": None, "n": 0}},
                   "extra": {"k": 1}}


def test_read_generations_names_a_bad_line_and_keeps_the_first_sample(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": "a", "sample": 0, "answer": "x"}\n{"id": "a", "sample": 1, "answer": "y"}\n')
    assert read_generations(path)["a"]["answer"] == "x"
    path.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(BenchmarkError, match=r"g.jsonl:2: not valid JSON"):
        read_generations(path)


def test_limit_items_is_a_seeded_subset_in_order():
    items = list(range(100))
    picked = limit_items(items, 10, seed=3)
    assert len(picked) == 10 and picked == sorted(picked) and picked == limit_items(items, 10, seed=3)
    assert picked != limit_items(items, 10, seed=4)
    assert limit_items(items, None) is items


def test_missing_data_dir_says_how_to_get_it():
    with pytest.raises(BenchmarkError, match="fetch-benchmarks"):
        get_benchmark("math-500").load_items(None)


def _write_generations(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_score_writes_scores_and_logs_an_mlflow_run(tmp_path, mlflow_uri):
    import mlflow

    from rlmt.cli import app

    items = get_benchmark("popqa").load_items(FIXTURES)
    rows = [{"id": i.id, "answer": f"It is {i.reference['aliases'][0]}.", "answer_found": True} for i in items[:9]]
    rows += [{"id": i.id, "answer": "", "answer_found": False} for i in items[9:]]
    gens = _write_generations(tmp_path / "generations.jsonl", rows)
    out = tmp_path / "eval" / "scores.json"
    config = Path(__file__).parents[1] / "config" / "config.yaml"
    from rlmt.benchmarks.item_files import write_items

    items_file = write_items(items, tmp_path / "items.jsonl")  # what `rlmt eval items` writes
    result = CliRunner().invoke(app, ["eval", "score", "--bench", "popqa", "--generations", str(gens), "--out", str(out),
                                      "--config", str(config), "--items", str(items_file), "--model-name", "tiny"])
    assert result.exit_code == 0, result.output
    assert "popqa: score 75.00" in result.output and "n_failed=3" in result.output
    doc = json.loads(out.read_text())
    assert doc["metrics"]["score"]["value"] == 75.0 and doc["n"] == 12 and doc["n_failed"] == 3
    assert doc["metrics"]["score"]["ci_low"] < 75.0 < doc["metrics"]["score"]["ci_high"]
    assert len((out.parent / "per_item.jsonl").read_text().splitlines()) == 12
    runs = mlflow.search_runs(experiment_names=["rlmt"], filter_string="tags.`rlmt.stage` = 'score'")
    assert len(runs) == 1 and runs.iloc[0]["tags.mlflow.runName"] == "score:tiny:popqa"
    assert runs.iloc[0]["metrics.score"] == 75.0 and runs.iloc[0]["metrics.n_failed"] == 3
    assert runs.iloc[0]["metrics.score_ci_low"] == doc["metrics"]["score"]["ci_low"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs.iloc[0]["run_id"])}
    assert {"scores.json", "per_item.jsonl", "sample_outputs.json"} <= artifacts


def test_generations_of_other_items_are_an_error(tmp_path):
    from rlmt.benchmarks.scoring import score_file

    gens = _write_generations(tmp_path / "g.jsonl", [{"id": "not-a-popqa-id", "answer": "x", "answer_found": True}])
    with pytest.raises(BenchmarkError, match="1 generation id\\(s\\) are not popqa items"):
        score_file("popqa", gens, tmp_path / "s.json", data_dir=FIXTURES)
    assert not (tmp_path / "s.json").exists()


def test_cli_score_rejects_bad_input(tmp_path):
    from rlmt.cli import app

    config = str(Path(__file__).parents[1] / "config" / "config.yaml")
    runner = CliRunner()
    gens = _write_generations(tmp_path / "g.jsonl", [{"id": "not-a-popqa-id", "answer": "x", "answer_found": True}])
    base = ["eval", "score", "--generations", str(gens), "--out", str(tmp_path / "s.json"), "--config", config,
            "--data-dir", str(FIXTURES)]
    res = runner.invoke(app, [*base, "--bench", "nope"])
    assert res.exit_code == 2 and "unknown benchmark 'nope'" in res.output
    res = runner.invoke(app, [*base, "--bench", "popqa", "--option", "novalue"])
    assert res.exit_code == 2 and "--option: expected KEY=VALUE, got 'novalue'" in res.output
    res = runner.invoke(app, [*base, "--bench", "reward-winrate"])
    assert res.exit_code == 2 and "needs --reference-generations and the reward's files (--reward-model DIR" in res.output
    res = runner.invoke(app, ["data", "fetch-benchmarks", "--out", str(tmp_path / "d"), "--only", "mmlu"])
    assert res.exit_code == 2 and "unknown benchmark(s) ['mmlu']" in res.output
