"""MLflow tracking as the UI shows it: the experiment's kind, cell parents spanning their children and
carrying the cell's axes and scores, report links through the tracking URI in use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _cell(**kw):
    from rlmt.config import Cell

    axes = dict(algo="grpo", base="llama-base", start="warm-start", think=True, rm="tiny-rm", mixture="demo")
    return Cell(**{**axes, **kw})


def test_experiment_is_marked_for_model_training_new_or_old(store):
    from mlflow.tracking import MlflowClient

    from rlmt.tracking import stage_run

    client = MlflowClient(store)
    old = client.create_experiment("made-before")  # a store written before the mark existed
    with stage_run("prepare", experiment="fresh"):
        pass
    with stage_run("prepare", experiment="made-before"):
        pass
    for name in ("fresh", "made-before"):
        assert client.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_two_shipped_configs_log_to_different_experiments():
    from rlmt.config import load_config

    names = {load_config(ROOT / f"config/{c}.yaml").tracking.experiment for c in ("config", "paper")}
    assert len(names) == 2, names


def test_a_cell_parent_spans_its_children(store):
    from mlflow.tracking import MlflowClient

    from rlmt.tracking import stage_run

    for stage in ("train", "generate"):
        with stage_run(stage, cell="cell-a"):
            time.sleep(0.3)
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("rlmt")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rlmt.is_parent") == "true")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert parent.info.start_time <= min(c.info.start_time for c in children)
    assert parent.info.end_time >= max(c.info.end_time for c in children)
    # ... so its duration is at least the two 0.3 s jobs, not the milliseconds of its creation
    assert parent.info.end_time - parent.info.start_time >= 600


def test_cell_parent_carries_axes_and_scores_and_sorts_by_average(store):
    from mlflow.tracking import MlflowClient

    from rlmt.tracking import update_cell_parent

    a, b = _cell(), _cell(algo="dpo", think=False)
    update_cell_parent(a, {"score.demo-if": 40.0, "score.avg": 40.0, "score.avg_chat": None})
    update_cell_parent(b, {"score.demo-if": 70.0, "score.avg": 70.0})
    update_cell_parent(a, {"score.avg": 45.0})  # the report job runs again: latest value wins, params kept
    client = MlflowClient(store)
    exp = client.get_experiment_by_name("rlmt")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`rlmt.is_parent` = 'true'",
                              order_by=["metrics.`score.avg` DESC"])
    assert [r.data.tags["rlmt.cell"] for r in runs] == [b.name, a.name]
    assert runs[0].data.params == {"algo": "dpo", "base": "llama-base", "start": "warm-start", "think": "nothink",
                                   "rm": "tiny-rm", "mixture": "demo"}
    assert runs[1].data.metrics == {"score.demo-if": 40.0, "score.avg": 45.0}  # None left out


def test_report_links_through_the_tracking_uri_in_use(store, tmp_path):
    from rlmt.report.build import browse_command, run_links, ui_base
    from rlmt.tracking import parent_run_id

    run_id = parent_run_id("cell-a")
    local = run_links(["cell-a", "nothing"], uri=None, experiment="rlmt", ui_url="http://ui.example:8080/")
    assert set(local) == {"cell-a"}
    assert local["cell-a"].startswith("http://ui.example:8080/#/experiments/") and local["cell-a"].endswith(run_id)
    assert ui_base("https://mlflow.cluster:5000/", "http://ignored") == "https://mlflow.cluster:5000"
    assert browse_command(store) == f"mlflow ui --backend-store-uri {store}"
    assert browse_command("http://mlflow.cluster:5000") == ""


def test_a_run_with_its_own_uri_leaves_the_environment_as_it_was(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI; a stage run given its own store must not
    reroute the next run of the same process (the env wins over a configured uri)."""
    import os

    from mlflow.tracking import MlflowClient

    from rlmt.tracking import stage_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))
    with stage_run("prepare", uri=first):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", second)
    with stage_run("prepare", uri=first):  # the env still wins, and is still the same afterwards
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == second
    assert len(MlflowClient(first).search_runs([MlflowClient(first).get_experiment_by_name("rlmt").experiment_id])) == 1
    assert len(MlflowClient(second).search_runs([MlflowClient(second).get_experiment_by_name("rlmt").experiment_id])) == 1
