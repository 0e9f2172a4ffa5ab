"""A real Snakemake run of a two-cell grid on tiny models: outputs, MLflow lineage, one-cell reruns, reports.

One module-scoped run serves every test here (it is the slowest thing in the suite).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CELLS = ["grpo__llama-base__warm-start__think__tiny-rm__demo", "dpo__llama-base__warm-start__nothink__tiny-rm__demo"]
# The module-scoped Snakemake run (up to 1500 s under load) is charged to whichever test comes first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _mini_config() -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k.startswith("llama")}
    cfg["grid"] = [
        {"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True], "rm": ["tiny-rm"], "mixture": ["demo"]},
        {"algo": ["dpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [False], "rm": ["tiny-rm"], "mixture": ["demo"]},
    ]
    cfg["mixtures"]["demo"].update(n_train=24, n_val=6)
    cfg["algorithms"]["sft"].update(max_steps=2)
    cfg["algorithms"]["grpo"].update(max_steps=2, checkpoints={"save_steps": 1, "save_total_limit": 2})
    cfg["algorithms"]["dpo"].update(max_steps=2)
    cfg["evaluation"]["evaluate_initial"] = False
    cfg["evaluation"]["benchmarks"] = {"demo-if": {"limit": 4}, "reward-winrate": {"limit": 4}}
    cfg["generation"]["sampling"].update(max_new_tokens_think=24, max_new_tokens_nothink=16)
    return cfg


def _snakemake(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlruns.db'}", "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
                           "--configfile", str(workdir / "config.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    (workdir / "config.yaml").write_text(yaml.safe_dump(_mini_config()))
    proc = _snakemake(workdir, "--cores", "2", "all")
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2500:]}" for p in (workdir / "results/logs").rglob("*.log"))
        pytest.fail(f"snakemake failed:\n{proc.stderr[-4000:]}\n{logs[-12000:]}")
    return workdir


def test_every_cell_is_trained_evaluated_and_reported(run):
    for cell in CELLS:
        final = run / "results/checkpoints" / cell / "final"
        assert (final / "model.safetensors").exists() or list(final.glob("*.safetensors"))
        assert ((final / "longcot_config.json").exists()) == ("__think__" in cell)
        scores = json.loads((run / "results/eval" / cell / "scores.json").read_text())
        assert set(scores["benchmarks"]) == {"demo-if", "reward-winrate"}
        for bench in scores["benchmarks"].values():
            assert 0.0 <= bench["value"] <= 100.0 and bench["n"] == 4
    # the main table's numbers are the score files' headline values (and their mean), row by row
    with (run / "results/report/main_table.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(CELLS)
    for cell in CELLS:
        values = []
        for bench, label in (("demo-if", "DemoIF"), ("reward-winrate", "RM-WR")):
            s = json.loads((run / "results/eval" / cell / bench / "scores.json").read_text())["metrics"]["score"]
            assert float(rows[cell][label]) == pytest.approx(s["value"], rel=1e-12, abs=1e-12), (cell, label)
            assert rows[cell][f"{label} CI"] == f"[{s['ci_low']:.1f}, {s['ci_high']:.1f}]", (cell, label)
            values.append(s["value"])
        assert float(rows[cell]["Avg"]) == pytest.approx(sum(values) / 2, rel=1e-12, abs=1e-12)
        assert rows[cell]["stage"] == ("+ GRPO" if cell.startswith("grpo") else "+ DPO")
    report = (run / "results/report/report.md").read_text()
    assert "Main table" in report and "DemoIF" in report
    assert list((run / "results/report/figures").glob("*.png"))
    html = (run / "results/report/report.html").read_text()
    assert "#/experiments/" in html  # numbers link to their MLflow runs


def test_mlflow_has_a_parent_per_cell_with_a_child_per_stage(run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp = client.get_experiment_by_name("rlmt")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    for cell in CELLS:
        parents = [r for r in runs if r.data.tags.get("rlmt.cell") == cell and r.data.tags.get("rlmt.is_parent") == "true"]
        assert len(parents) == 1, cell
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
        rules = {r.data.tags["rlmt.rule"] for r in children}
        assert {"train", "generate", "score", "model_scores"} <= rules, rules
        assert all(r.info.status == "FINISHED" for r in children)
        train = next(r for r in children if r.data.tags["rlmt.rule"] == "train")
        assert any(k.startswith("rlmt.input.policy") for k in train.data.tags)


def test_mlflow_server_serves_the_same_tree(run):
    if shutil.which("mlflow", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mlflow CLI not found next to the interpreter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{run / 'mlruns.db'}",
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/experiments/get-by-name?experiment_name=rlmt", timeout=5) as r:
                    exp_id = json.load(r)["experiment"]["experiment_id"]
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
        body = json.dumps({"experiment_ids": [exp_id], "filter": "tags.`rlmt.is_parent` = 'true'", "max_results": 100}).encode()
        req = urllib.request.Request(f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            parents = json.load(r)["runs"]
        names = {t["value"] for p in parents for t in p["data"]["tags"] if t["key"] == "rlmt.cell"}
        assert set(CELLS) <= names
        parent_id = next(p["info"]["run_id"] for p in parents
                         if {"key": "rlmt.cell", "value": CELLS[0]} in p["data"]["tags"])
        body = json.dumps({"experiment_ids": [exp_id], "filter": f"tags.`mlflow.parentRunId` = '{parent_id}'"}).encode()
        req = urllib.request.Request(f"{base}/runs/search", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            children = json.load(r)["runs"]
        assert len(children) >= 4
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_deleting_one_final_checkpoint_replans_only_that_cell(run):
    target = run / "results/checkpoints" / CELLS[0] / "final"
    backup = target.with_name("final.bak")
    target.rename(backup)
    try:
        proc = _snakemake(run, "-n", "--cores", "2", "all", timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        planned = proc.stdout + proc.stderr
        assert "Job stats:" in planned, planned[-3000:]
        block = planned.split("Job stats:")[1]
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
        assert counts.pop("train") == 1
        assert counts.pop("report") == 1 and counts.pop("all") == 1 and counts.pop("total") >= 4
        assert set(counts) <= {"generate", "score", "score_winrate", "model_scores"}
        assert CELLS[0] in planned and f"wildcards: cell={CELLS[1]}" not in planned
        assert f"evalmodel={CELLS[1]}" not in planned
    finally:
        backup.rename(target)


def test_a_grpo_setting_change_reruns_that_training_only(run):
    """A config edit reruns the jobs whose settings changed: here one GRPO cell's training and its evaluation, never
    the SFT both cells start from nor the other cell (the preflight check gates every run without being a job)."""
    snapshot = run / "results/.rlmt/config.yaml"
    backup = snapshot.with_name("config.yaml.bak")
    shutil.copy2(snapshot, backup)  # the dry run rewrites the snapshot: content and mtime come back after
    cfg = _mini_config()
    cfg["algorithms"]["grpo"]["learning_rate"] = 2 * cfg["algorithms"]["grpo"]["learning_rate"]
    (run / "config-lr.yaml").write_text(yaml.safe_dump(cfg))
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlruns.db'}"}
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(run),
                               "--configfile", str(run / "config-lr.yaml"), "-n", "--cores", "2", "all"],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        planned = proc.stdout + proc.stderr
        block = planned.split("Job stats:")[1]
        counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}
        assert counts.get("sft") is None, planned[-3000:]
        assert counts["train"] == 1 and "preflight" not in counts
        assert f"wildcards: cell={CELLS[0]}" in planned and f"wildcards: cell={CELLS[1]}" not in planned
    finally:
        shutil.copy2(backup, snapshot)
        backup.unlink()


def test_snakemake_self_contained_report(run):
    """The HTML embeds the run's own report files (byte for byte) and its rule graph."""
    import base64

    out = run / "snakemake-report.html"
    proc = _snakemake(run, "--report", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    results = json.loads(re.search(r"var results = (\{.*?\});\n", text, re.S).group(1))

    def embedded(entry: dict) -> bytes:
        head, _, payload = entry["data_uri"].partition("base64,")
        assert head.startswith("data:"), head
        return base64.b64decode(payload)

    table = next(e for name, e in results.items() if name.endswith("main_table.csv"))
    assert embedded(table) == (run / "results/report/main_table.csv").read_bytes()
    assert table["job_properties"]["rule"] == "report" and table["caption"].strip()
    pngs = {p.read_bytes() for p in (run / "results/report/figures").glob("*.png")}
    shown = [embedded(e) for name, e in results.items() if name.endswith(".png")]
    assert shown and set(shown) <= pngs  # every figure shown is one the run drew
    graph = json.loads(re.search(r"var rulegraph_spec = (\{.*?\});\n", text, re.S).group(1))
    rules = {node["rule"] for data in graph["data"] if data["name"] == "node-data" for node in data["values"]}
    assert {"train", "generate", "score", "report", "all"} <= rules, rules
