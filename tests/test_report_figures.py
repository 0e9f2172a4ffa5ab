"""The report's training curves, read back from a real MLflow store (sqlite) and drawn."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from rlmt.report.figures import plot_training_curves, training_histories
from rlmt.tracking import TAG_CELL, TAG_RULE


def test_training_curves_read_the_one_diag_vocabulary(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("curves", artifact_location=str(tmp_path / "artifacts"))
    logged = {  # GRPO and PPO log the same names (rlmt.diagnostics); the old per-trainer names are not read
        "grpo-cell": ("diag/malformed_share", [0.44, 0.28, 0.22]),
        "ppo-cell": ("diag/malformed_share", [0.5, 0.25]),
        "old-cell": ("answer/malformed_fraction", [0.3]),
    }
    for cell, (name, values) in logged.items():
        run = client.create_run(exp, tags={TAG_CELL: cell, TAG_RULE: "train"})
        for step, value in enumerate(values, 1):
            client.log_metric(run.info.run_id, name, value, step=step)
            client.log_metric(run.info.run_id, "diag/reward_mean" if cell != "old-cell" else "reward/mean",
                              -float(step), step=step)
        client.set_terminated(run.info.run_id)
    unfinished = client.create_run(exp, tags={TAG_CELL: "grpo-cell", TAG_RULE: "train"})  # a crashed rerun
    client.log_metric(unfinished.info.run_id, "diag/malformed_share", 1.0, step=1)

    histories = training_histories(["grpo-cell", "ppo-cell", "old-cell", "never-ran"], uri=uri, experiment="curves")
    assert set(histories) == {"grpo-cell", "ppo-cell", "old-cell"} and histories["old-cell"] == {}
    assert histories["grpo-cell"]["malformed_fraction"] == [(1, pytest.approx(0.44)), (2, pytest.approx(0.28)),
                                                            (3, pytest.approx(0.22))]
    assert histories["ppo-cell"]["malformed_fraction"] == [(1, 0.5), (2, 0.25)]
    assert histories["ppo-cell"]["reward"] == [(1, -1.0), (2, -2.0)]

    written = {p.name for p in plot_training_curves(histories, tmp_path)}
    assert written == {"train_reward.png", "train_malformed_fraction.png"}
    assert (tmp_path / "train_malformed_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
