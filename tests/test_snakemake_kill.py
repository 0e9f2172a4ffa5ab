"""kill -9 of Snakemake itself mid-DAG, then the same command again.

Killing Snakemake leaves two things behind: its directory locks (the next run would stop with a
LockException) and its running job, which lives on as an orphan and keeps training into the
checkpoint dir. The rerun must free the stale locks, must not train beside the orphan, must not
redo a job that had finished, and must lose no checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CELL = "grpo__llama-base__warm-start__think__tiny-rm__demo"
TARGET = f"results/checkpoints/{CELL}/final"


def _holder(code: str, ready: Path) -> subprocess.Popen:
    """A python process that runs `code`, then touches `ready` and sleeps until killed."""
    script = textwrap.dedent(code) + f"\nimport pathlib, time\npathlib.Path({str(ready)!r}).touch()\ntime.sleep(600)\n"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return proc


def _release_in_fresh_process(workdir: Path) -> list[str]:
    out = subprocess.run([sys.executable, "-c", "import sys; from rlmt.stale_locks import release_stale_locks; "
                          f"print([p.name for p in release_stale_locks({str(workdir)!r})])"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout.strip())


def test_stale_snakemake_locks_are_removed_only_once_their_snakemake_is_gone(tmp_path):
    locks = tmp_path / ".snakemake/locks"
    live = _holder(f"from rlmt.stale_locks import release_stale_locks; release_stale_locks({str(tmp_path)!r})",
                   tmp_path / "ready")
    try:
        locks.mkdir(parents=True)
        for name in ("0.input.lock", "0.output.lock"):
            (locks / name).write_text("results/x\n")
        assert _release_in_fresh_process(tmp_path) == []  # a Snakemake of this workflow is alive: keep them
        assert sorted(p.name for p in locks.iterdir()) == ["0.input.lock", "0.output.lock"]
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait(timeout=60)
    assert _release_in_fresh_process(tmp_path) == ["0.input.lock", "0.output.lock"]
    assert list(locks.iterdir()) == []


def test_a_second_writer_waits_for_the_first_to_exit(tmp_path):
    """claim_writer (taken by discard_incomplete, which every trainer calls first) blocks while a
    live process holds the checkpoint dir and returns once it is killed."""
    from rlmt.train import checkpoints as ckpt

    out = tmp_path / "ckpt"
    out.mkdir()
    orphan = _holder(f"from rlmt.train.checkpoints import discard_incomplete; discard_incomplete({str(out)!r})",
                     tmp_path / "ready")
    messages: list[str] = []
    claimed = threading.Event()
    waiter = threading.Thread(target=lambda: (ckpt.claim_writer(out, log=messages.append), claimed.set()))
    try:
        waiter.start()
        assert not claimed.wait(3.0), "claimed the dir while another process was writing into it"
        assert messages == [f"{out}: pid {orphan.pid} is still writing here; waiting for it to exit, "
                            "then resuming from what it left"]
    finally:
        os.kill(orphan.pid, signal.SIGKILL)
        orphan.wait(timeout=60)
    assert claimed.wait(30.0)
    waiter.join()
    ckpt.release_writer(out)


def _job_counts(text: str) -> dict[str, int]:
    block = text.split("Job stats:")[1].strip("\n").split("\n\n")[0] if "Job stats:" in text else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def _stage_runs(db: Path) -> dict[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("rlmt")
    runs: dict[str, list[str]] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"]):
        if r.data.tags.get("rlmt.is_parent") != "true":
            runs.setdefault(r.data.tags.get("rlmt.stage", "?"), []).append(r.info.run_id)
    return runs


@pytest.mark.slow
@pytest.mark.timeout(3000)  # up to 1500 s to the kill, then up to 900 s for the rerun
def test_kill_9_of_snakemake_mid_dag_then_the_same_command_completes_without_redoing_work(tmp_path):
    from mlflow.tracking import MlflowClient
    from test_e2e import _mini_config

    from rlmt.train.checkpoints import writer_lock_path

    cfg = _mini_config()
    cfg["grid"] = [cfg["grid"][0]]  # one GRPO cell: prepare x3, curate, sft_data, sft, train
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    db = tmp_path / "mlruns.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", TARGET]
    ckpts = tmp_path / "results/checkpoints" / CELL

    with (tmp_path / "first.log").open("w") as log:
        first = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 1500
    try:
        while not (ckpts / "step-1/checkpoint.json").is_file():  # the train job, the DAG's last, is mid-run
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-4000:]
            time.sleep(0.05)
    except BaseException:
        os.killpg(first.pid, signal.SIGKILL)  # the test failed: end Snakemake and its jobs
        raise
    in_flight = {writer_lock_path(ckpts)}  # the train job's own lock beside its checkpoints
    finished = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*")
                if p.is_file() and ckpts not in p.parents and "logs" not in p.parts and p not in in_flight}
    assert any("models" in p.parts for p in finished) and any("mixtures" in p.parts for p in finished)
    os.kill(first.pid, signal.SIGKILL)  # Snakemake only: its job lives on
    first.wait(timeout=60)
    assert list((tmp_path / ".snakemake/locks").glob("*.lock")), "Snakemake's locks should be left behind"
    assert not (ckpts / "final").exists()

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-4000:]
    assert "the Snakemake that locked this directory is gone" in output
    assert _job_counts(output) == {"train": 1, "total": 1}, output[-3000:]  # only the unfinished job ran

    # nothing recomputed, nothing lost
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert (ckpts / "final/selected.json").is_file() and (ckpts / "final/model.safetensors").is_file()
    runs = _stage_runs(db)
    for stage in ("prepare", "curate", "sft_data", "sft"):
        assert len(runs.get(stage, [])) == (3 if stage == "prepare" else 1), (stage, runs)
    steps = sorted(p.name for p in ckpts.glob("step-*") if (p / "checkpoint.json").is_file())
    # The orphan may have finished all max_steps=2 before the rerun resumed from step-2: then the
    # rerun must train nothing more (rlmt.train.job.train_from), not a step-3 past the schedule.
    assert steps == ["step-1", "step-2"]
    assert json.loads((ckpts / "final/selected.json").read_text())["step"] == 2
    client = MlflowClient(f"sqlite:///{db}")
    train = [client.get_run(r) for r in runs["grpo"]]
    # the orphan finished its run; the rerun waited for it and had no step left to train
    assert [r.info.status for r in train] == ["FINISHED", "FINISHED"]
    assert [m.step for m in client.get_metric_history(train[0].info.run_id, "reward")] == [1, 2]
    assert client.get_metric_history(train[1].info.run_id, "reward") == []
