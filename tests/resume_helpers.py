"""Crash-and-resume helpers for the training tests: run a job, kill -9 it once a checkpoint is
complete, compare what two runs wrote.

A job's subprocesses run with one BLAS/OpenMP thread: two runs compared with each other then do
the same arithmetic in the same order, and two of them fit side by side on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHECKPOINT_META = "checkpoint.json"


def job_env(mlflow_db: Path, **extra: str) -> dict[str, str]:
    """The environment of a training job: its own MLflow store, one thread."""
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_db}", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def rlmt(*args: str) -> list[str]:
    return [sys.executable, "-m", "rlmt.cli", *args]


def start(cmd: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    """Start `cmd` with stdout and stderr in `log` (read it when the job fails)."""
    fh = log.open("w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log  # type: ignore[attr-defined]
    fh.close()
    return proc


def tail(proc: subprocess.Popen, n: int = 4000) -> str:
    return Path(proc.log_path).read_text()[-n:]  # type: ignore[attr-defined]


def complete_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in out.glob("step-*") if (p / CHECKPOINT_META).is_file())


def kill_after_checkpoint(proc: subprocess.Popen, out: Path, step: int, timeout: float = 600) -> list[int]:
    """Wait until ``out/step-<step>`` is complete, then kill -9 the job; the complete steps at that moment.

    The job must still be running when it is killed (a job that finished first proves nothing).
    """
    deadline = time.monotonic() + timeout
    while not (out / f"step-{step}" / CHECKPOINT_META).is_file():
        assert proc.poll() is None, f"the job exited (rc {proc.returncode}) before step-{step}:\n{tail(proc)}"
        assert time.monotonic() < deadline, f"no step-{step} checkpoint within {timeout} s:\n{tail(proc)}"
        time.sleep(0.02)
    assert proc.poll() is None, f"the job finished before it could be killed:\n{tail(proc)}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    return complete_steps(out)


def wait_ok(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for the job; it must succeed. Returns its output."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the job ran past {timeout} s:\n{tail(proc)}") from None
    assert proc.returncode == 0, f"the job failed (rc {proc.returncode}):\n{tail(proc)}"
    return Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def max_weight_diff(dir_a: Path, dir_b: Path, name: str = "model.safetensors") -> float:
    """The largest absolute difference between two safetensors files with the same tensors."""
    from safetensors.torch import load_file

    a, b = load_file(str(dir_a / name)), load_file(str(dir_b / name))
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def log_history(step_dir: Path) -> dict[int, dict]:
    """step -> the logged values of that step, from a checkpoint's trainer_state.json."""
    merged: dict[int, dict] = {}
    for entry in json.loads((step_dir / "trainer_state.json").read_text())["log_history"]:
        if "step" in entry:  # a training entry and an evaluation entry may share a step
            merged.setdefault(entry["step"], {}).update(entry)
    return merged


def mlflow_runs(db: Path, stage: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rlmt")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`rlmt.stage` = '{stage}'",
                              order_by=["attributes.start_time ASC"])


def metric_by_step(db: Path, run_id: str, key: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(f"sqlite:///{db}").get_metric_history(run_id, key)}


def samples_table(db: Path, run_id: str, step: int) -> list[dict]:
    """The rows of the run's ``samples/step-<N>.json`` table."""
    from mlflow.tracking import MlflowClient

    path = MlflowClient(f"sqlite:///{db}").download_artifacts(run_id, f"samples/step-{step:06d}.json")
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]
