"""The Slurm path on a real Slurm cluster started on this host (tests/slurm/cluster.sh, two slurmd = two nodes).

A two-cell grid of the embedded default (the tiny models of config/config.yaml; GRPO think and DPO
nothink on llama-base, fewer prompts and steps) runs through the repository's Slurm profile
(profiles/slurm) plus a small overlay (partition, account, squeue as the status command, a short
first status check). Every non-local job is an sbatch job; the GRPO cell trains as a 2-node,
2-task job whose two processes rlmt.launch starts through srun (one per node) and accelerate
launch. While it trains, the test scancels it: the profile's retry resubmits it and it resumes from
its last checkpoint. The same grid run locally gives the report the Slurm run's must match in structure.

Slurm's own record of every finished job is the jobcomp/filetxt file the cluster script configures.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests/slurm/cluster.sh"
SLURM_DIR = Path(os.environ.get("RLMT_SLURM_DIR", "/tmp/rlmt-slurm"))
GRPO = "grpo__llama-base__warm-start__think__tiny-rm__demo"
DPO = "dpo__llama-base__warm-start__nothink__tiny-rm__demo"
GRPO_STEPS = 3

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(3000)]


def mini_config() -> dict:
    """The embedded default cut to two cells and a few steps (a full default run is ~60 Slurm jobs)."""
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k.startswith("llama")}
    cfg["grid"] = [
        {"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True], "rm": ["tiny-rm"],
         "mixture": ["demo"]},
        {"algo": ["dpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [False], "rm": ["tiny-rm"],
         "mixture": ["demo"]},
    ]
    cfg["mixtures"]["demo"].update(n_train=24, n_val=6)
    cfg["algorithms"]["sft"].update(max_steps=2)
    # 4 prompts x 4 completions per update split over the 2 processes of the Slurm cell: 8 per device
    cfg["algorithms"]["grpo"].update(max_steps=GRPO_STEPS, per_device_train_batch_size=8,
                                     checkpoints={"save_steps": 1, "save_total_limit": 3})
    cfg["algorithms"]["dpo"].update(max_steps=2)
    cfg["evaluation"]["benchmarks"] = {"demo-if": {"limit": 4}, "reward-winrate": {"limit": 4}}
    cfg["generation"]["sampling"].update(max_new_tokens_think=24, max_new_tokens_nothink=16)
    cfg["resources"] = {"default": {"gpus": 0, "cpus_per_task": 1, "mem_mb": 2500, "runtime": 30}}
    return cfg


def slurm_config() -> dict:
    """The same grid; GRPO trains on 2 nodes, one process per node, under accelerate (rlmt.launch)."""
    cfg = mini_config()
    cfg["resources"]["train_grpo"] = {"gpus": 0, "nodes": 2, "cpus_per_task": 1, "mem_mb": 3000, "runtime": 30,
                                      "launcher": "accelerate"}
    return cfg


OVERLAY = {
    # what a site fills in: its partition and account
    "default-resources": {"slurm_partition": "debug", "slurm_account": "rlmt", "mem_mb": 2000, "runtime": 30,
                          "cpus_per_task": 1},
    # no slurmdbd here, so no sacct; squeue sees finished jobs for MinJobAge=600 s
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": 5,
    "jobs": 8,
}


def _env(workdir: Path) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}", "OMP_NUM_THREADS": "1",
           "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


def _snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
            f"--configfile={workdir / 'config.yaml'}", *args]


def _workdir(tmp_path_factory, name: str, cfg: dict) -> Path:
    workdir = tmp_path_factory.mktemp(name)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return workdir


def _fail(workdir: Path, what: str, log: str) -> None:
    logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (workdir / "results/logs").rglob("*.log"))
    pytest.fail(f"{what} failed:\n{log[-5000:]}\n{logs[-10000:]}")


def jobcomp(workdir: Path) -> list[dict[str, str]]:
    """Slurm's records of the finished jobs that ran in `workdir` (jobcomp/filetxt)."""
    path = SLURM_DIR / "log/jobcomp.txt"
    rows = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r.get("WorkDir") == str(workdir)]


def _squeue_train_job(cell: str) -> str | None:
    done = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True, text=True,
                          timeout=60)
    for line in done.stdout.splitlines():
        job_id, _, comment = line.partition(" ")
        if comment.startswith("rule_train_") and cell in comment:
            return job_id
    return None


@pytest.fixture(scope="module")
def cluster():
    """The cluster of tests/slurm/cluster.sh (started here, and stopped after, unless it was already up)."""
    was_up = subprocess.run([str(CLUSTER), "status"], capture_output=True, timeout=120).returncode == 0
    done = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}).stdout.split("\n")
    assert len([n for n in nodes if n.strip()]) == 2, nodes
    yield
    if not was_up:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, timeout=300)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    workdir = _workdir(tmp_path_factory, "local", mini_config())
    proc = subprocess.run(_snakemake_cmd(workdir, "--cores", "2", "all"), capture_output=True, text=True,
                          timeout=1800, env=_env(workdir))
    if proc.returncode != 0:
        _fail(workdir, "the local run", proc.stderr)
    return workdir


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> dict:
    """The Slurm run, with one scancel of the GRPO training job after its first checkpoint."""
    workdir = _workdir(tmp_path_factory, "slurm", slurm_config())
    profile = workdir / "site-profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(OVERLAY))
    env = _env(workdir)
    profiles = ["--profile", str(ROOT / "profiles/slurm"), "--profile", str(profile)]

    dry = subprocess.run(_snakemake_cmd(workdir, "-n", *profiles, "all"), capture_output=True, text=True,
                         timeout=600, env=env)
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = job_counts(dry.stdout)

    log_path = workdir / "snakemake.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(_snakemake_cmd(workdir, *profiles, "all"), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
    ckpt = workdir / "results/checkpoints" / GRPO
    cancelled = None
    deadline = time.time() + 2400
    while proc.poll() is None and time.time() < deadline:
        if cancelled is None and (ckpt / "step-1/checkpoint.json").exists() and not (ckpt / "final").exists():
            cancelled = _squeue_train_job(GRPO)
            if cancelled:
                steps_at_cancel = sorted(p.name for p in ckpt.glob("step-*") if (p / "checkpoint.json").exists())
                subprocess.run(["scancel", cancelled], check=True, env=env, timeout=60)
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=120)
    text = log_path.read_text()
    if proc.returncode != 0:
        _fail(workdir, "the Slurm run", text)
    assert cancelled, "the GRPO training job was never seen running between its first checkpoint and final/"
    return {"workdir": workdir, "planned": planned, "log": text, "cancelled": cancelled,
            "steps_at_cancel": steps_at_cancel}


def job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_every_non_local_job_is_one_sbatch_job(slurm_run):
    """Slurm ran exactly the DAG's non-local jobs (plus the one resubmitted after scancel), all COMPLETED."""
    workdir, log = slurm_run["workdir"], slurm_run["log"]
    planned = dict(slurm_run["planned"])
    total = planned.pop("total")
    local = re.findall(r"^localrule (\w+):", log, re.M)
    remote = re.findall(r"^rule (\w+):", log, re.M)
    # (zero_model is local too; this grid has no zero cell)
    assert set(local) == {"all", "benchmark_items", "score", "model_scores", "report"}
    # one block per job run; the cancelled training job's retry is the only repeat
    assert len(local) + len(remote) == total + 1 and remote.count("train") == planned["train"] + 1
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    records = {r["JobId"]: r for r in jobcomp(workdir)}
    assert sorted(records) == sorted(submitted) and len(submitted) == len(remote)
    states = [r["JobState"] for r in records.values()]
    assert states.count("CANCELLED") == 1 and records[slurm_run["cancelled"]]["JobState"] == "CANCELLED"
    assert states.count("COMPLETED") == total - len(local)  # == the number of non-local DAG jobs
    for rule in ("prepare_model", "curate", "sft_data", "sft", "generate", "score_winrate"):
        assert remote.count(rule) == planned[rule], rule
    assert {r["Partition"] for r in records.values()} == {"debug"}


def submissions(log: str) -> list[tuple[str, str, str]]:
    """(Slurm job id, rule, wildcards) of every sbatch submission, from the plugin's lines in the run's log."""
    return re.findall(r"has been submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_([^/]+)/(?:([^/]+)/)?\d+\.log",
                      log)


def test_grpo_trains_as_a_two_node_two_task_job_started_by_rlmt_launch(slurm_run):
    workdir = slurm_run["workdir"]
    train = [(job, wildcards) for job, rule, wildcards in submissions(slurm_run["log"]) if rule == "train"]
    records = {r["JobId"]: r for r in jobcomp(workdir)}
    grpo_jobs = [job for job, wildcards in train if wildcards == GRPO]
    assert len(grpo_jobs) == 2 and slurm_run["cancelled"] == grpo_jobs[0]  # the cancelled job and its retry
    host = os.uname().nodename.split(".")[0]
    for job in grpo_jobs:
        assert records[job]["NodeCnt"] == "2" and records[job]["NodeList"] == f"{host}-n[1-2]"
        assert "node=2" in records[job]["Tres"] and records[job]["ProcCnt"] == "2"  # 2 tasks x 1 CPU
    dpo_jobs = [job for job, wildcards in train if wildcards == DPO]
    assert len(dpo_jobs) == 1 and records[dpo_jobs[0]]["NodeCnt"] == "1" and records[dpo_jobs[0]]["ProcCnt"] == "1"
    train_log = (workdir / "results/logs/train" / f"{GRPO}.log").read_text()
    # rlmt.launch's srun task on each node says where it is, then execs accelerate launch
    starts = re.findall(r"rlmt-launch: node (\S+) machine_rank (\d) of 2, rendezvous (\S+)", train_log)
    assert sorted(rank for _, rank, _ in starts) == ["0", "1"]
    assert len({node for node, _, _ in starts}) == 2 and len({head for *_, head in starts}) == 1
    # and accelerate's two processes trained together: 2 processes x batch 16 / 16 per device
    assert "[rank1]" in train_log or "rank 1" in train_log.lower()
    state = json.loads((workdir / "results/checkpoints" / GRPO / f"step-{GRPO_STEPS}/trainer_state.json").read_text())
    assert state["global_step"] == GRPO_STEPS


def test_scancelled_training_resumes_from_its_last_checkpoint(slurm_run):
    from mlflow.tracking import MlflowClient

    workdir = slurm_run["workdir"]
    done_before = [int(s.split("-")[1]) for s in slurm_run["steps_at_cancel"]]
    assert done_before and done_before[-1] < GRPO_STEPS
    ckpt = workdir / "results/checkpoints" / GRPO
    assert sorted(p.name for p in ckpt.glob("step-*")) == [f"step-{i}" for i in range(1, GRPO_STEPS + 1)]
    assert json.loads((ckpt / "final/selected.json").read_text())["step"] == GRPO_STEPS
    client = MlflowClient(f"sqlite:///{workdir / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rlmt")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`rlmt.stage` = 'grpo'",
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 2 and runs[0].info.status != "FINISHED" and runs[1].info.status == "FINISHED"
    killed = [m.step for m in client.get_metric_history(runs[0].info.run_id, "reward")]
    resumed = [m.step for m in client.get_metric_history(runs[1].info.run_id, "reward")]
    # the retry starts right after a step the cancelled job trained and saved (at least the one seen at scancel)
    assert min(resumed) - 1 in killed and min(resumed) - 1 >= done_before[-1] and max(resumed) == GRPO_STEPS


def test_report_has_the_structure_of_a_local_run(slurm_run, local_run):
    slurm, local = slurm_run["workdir"] / "results/report", local_run / "results/report"

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def headings(root):
        return re.findall(r"^#+ .*$", (root / "report.md").read_text(), re.M)

    def table_shape(root):
        rows = list(csv.DictReader((root / "main_table.csv").open()))
        return list(rows[0]), sorted((r["model"], r["stage"], r["think"]) for r in rows)

    assert files(slurm) == files(local) and files(slurm)
    assert headings(slurm) == headings(local)
    assert table_shape(slurm) == table_shape(local)
    for cell in (GRPO, DPO):
        a = json.loads((slurm_run["workdir"] / "results/eval" / cell / "scores.json").read_text())
        b = json.loads((local_run / "results/eval" / cell / "scores.json").read_text())
        assert set(a["benchmarks"]) == set(b["benchmarks"]) == {"demo-if", "reward-winrate"}


TRAP = '''
rule all:
    input: "plain.txt", "mpi.txt"
rule plain:
    output: "plain.txt"
    resources: mem_mb=200, runtime=1, tasks=2, cpus_per_task=1
    shell: "srun -n 2 hostname > {output}"
rule mpi:
    output: "mpi.txt"
    resources: mem_mb=200, runtime=1, tasks=2, cpus_per_task=1, mpi="srun"
    shell: "srun -n 2 hostname > {output}"
'''


def test_an_srun_in_a_rule_needs_the_mpi_path(cluster, tmp_path):
    """The trap, on the real cluster: without `mpi` the plugin's jobstep wraps the rule in its own
    ``srun -n1`` step, which holds the job's CPUs, so the rule's ``srun -n 2`` waits for them until the
    time limit. With `mpi` the rule's srun is the job's only step and runs its two tasks."""
    (tmp_path / "Snakefile").write_text(TRAP)
    env = {**os.environ, "SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    done = subprocess.run([sys.executable, "-m", "snakemake", "--executor", "slurm", "--jobs", "2", "-k",
                           "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
                           "--default-resources", "slurm_partition=debug", "slurm_account=rlmt"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 0  # the plain rule failed
    assert (tmp_path / "mpi.txt").read_text().count("\n") == 2 and not (tmp_path / "plain.txt").exists()
    states = {r["JobId"]: r["JobState"] for r in jobcomp(tmp_path)}
    jobs = {rule: job for job, rule, _ in submissions(done.stdout + done.stderr)}
    assert states[jobs["plain"]] == "TIMEOUT" and states[jobs["mpi"]] == "COMPLETED"
    # the plugin keeps the failed job's log (a successful job's is deleted)
    plain_log = tmp_path / f".snakemake/slurm_logs/rule_plain/{jobs['plain']}.log"
    assert "step creation temporarily disabled" in plain_log.read_text()
