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
from conftest import missing_component

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE_MARKER = frozenset({".snakemake_timestamp"})  # what Snakemake writes into a directory() output
# the third cell is the first's no-think twin: the report's head-to-head pairs them (a DPO think twin would
# need a think SFT start that closes its thoughts, more SFT steps than this grid's two)
CELLS = ["grpo__llama-base__warm-start__think__tiny-rm__demo", "dpo__llama-base__warm-start__nothink__tiny-rm__demo",
         "grpo__llama-base__warm-start__nothink__tiny-rm__demo"]
# The module-scoped Snakemake run (up to 1500 s under load) is charged to whichever test comes first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _mini_config() -> dict:
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["models"] = {k: v for k, v in cfg["models"].items() if k.startswith("llama")}
    cfg["grid"] = [
        {"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True, False], "rm": ["tiny-rm"], "mixture": ["demo"]},
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
    # the length diagnostics (rlmt.diagnostics): each cell's saved verdict in the report, with the rules, and the
    # three figures (reward against answer length per cell, the correlation per GRPO step, the win-rate Pareto view)
    from rlmt.diagnostics import DPO_RULE, RL_RULE, load_verdict

    assert "## Length diagnostics" in report and RL_RULE in report and DPO_RULE in report
    figures = {p.name for p in (run / "results/report/figures").glob("length_*.png")}
    for cell in CELLS:
        verdict = load_verdict(run / "results/checkpoints" / cell)
        assert verdict.rule == ("rl" if cell.startswith("grpo") else "dpo")
        assert f"| {cell} | {verdict.label} |" in report
        assert f"length_reward_vs_answer__{cell}.png" in figures
    assert {"length_correlation.png", "length_winrate_pareto__reward-winrate.png"} <= figures


def test_every_table_number_links_to_the_run_that_produced_it(run):
    """report.html's main table: each number of a row links to its cell's parent run in the MLflow UI, and that run
    (with its score child runs) holds the very number shown; the row order is main_table.csv's."""
    from html import unescape

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("rlmt").experiment_id
    with (run / "results/report/main_table.csv").open(newline="", encoding="utf-8") as fh:
        csv_rows = list(csv.DictReader(fh))
    html = (run / "results/report/report.html").read_text()
    table = html.split("<h2>Main table</h2>")[1].split("</table>")[0]
    header = re.findall(r"<th>(.*?)</th>", table)
    html_rows = [re.findall(r"<td>(.*?)</td>", r) for r in re.findall(r"<tr>(<td>.*?)</tr>", table)]
    assert len(html_rows) == len(csv_rows) == len(CELLS)
    benches = {"DemoIF": "demo-if", "RM-WR": "reward-winrate"}
    for cells, row in zip(html_rows, csv_rows):
        shown = dict(zip(header, cells))
        assert [unescape(shown[c]) for c in ("backbone", "start", "stage", "think")] == \
            [row[c] for c in ("backbone", "start", "stage", "think")]
        parent = client.search_runs([exp_id], filter_string=f"tags.`rlmt.cell` = '{row['model']}' and "
                                    "tags.`rlmt.is_parent` = 'true'")[0]
        children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        for column, metric in (("DemoIF", "score.demo-if"), ("RM-WR", "score.reward-winrate"), ("Avg", "score.avg")):
            link, text = re.fullmatch(r"<a href='([^']*)'>([^<]*)(?:<br><small>.*</small>)?</a>", shown[column]).groups()
            assert link == f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{parent.info.run_id}", (column, link)
            value = float(row[column])
            assert float(text) == pytest.approx(value, abs=0.05)  # shown to one decimal
            assert parent.data.metrics[metric] == pytest.approx(value, rel=1e-12, abs=1e-12), (row["model"], column)
            if column in benches:  # the score job of that benchmark, under that parent, computed it
                [scored] = [c for c in children if c.data.tags.get("rlmt.rule") == "score"
                            and c.info.run_name.endswith(f":{benches[column]}")]
                assert scored.data.metrics["score"] == pytest.approx(value, rel=1e-12, abs=1e-12), (row["model"], column)


def test_lc_win_rate_and_head_to_head_are_in_the_report_and_on_their_runs(run):
    """The reward win rate's LC sits beside the raw rate in the main table (the score file's number, on the cell's
    parent run as score.reward-winrate.lc), and the GRPO think cell meets its no-think twin head to head: the
    table's raw win rate is the per-prompt outcomes of the two cells' per-item files by the stated rule, and each
    number links to the think cell's parent run, which holds it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("rlmt").experiment_id

    def parent(cell):
        return client.search_runs([exp_id], filter_string=f"tags.`rlmt.cell` = '{cell}' and tags.`rlmt.is_parent` = 'true'")[0]

    with (run / "results/report/main_table.csv").open(newline="", encoding="utf-8") as fh:
        rows = {r["model"]: r for r in csv.DictReader(fh)}
    for cell in CELLS:
        scores = json.loads((run / "results/eval" / cell / "reward-winrate/scores.json").read_text())
        lc = scores["metrics"]["lc_win_rate"]
        assert scores["metric_version"] == "5" and lc["n"] == scores["metrics"]["win_rate_both_answered"]["n"]
        if lc["value"] is None:  # no item both answered: nothing to control
            assert rows[cell]["RM-WR LC"] == "" and rows[cell]["RM-WR both"] == "", cell
            continue
        both = scores["metrics"]["win_rate_both_answered"]["value"]  # the raw rate on the LC's prompts, beside it
        assert float(rows[cell]["RM-WR both"]) == pytest.approx(both, rel=1e-12, abs=1e-12), cell
        assert float(rows[cell]["RM-WR LC"]) == pytest.approx(lc["value"], rel=1e-12, abs=1e-12), cell
        assert parent(cell).data.metrics["score.reward-winrate.lc"] == pytest.approx(lc["value"], rel=1e-12, abs=1e-12)

    with (run / "results/report/head_to_head.csv").open(newline="", encoding="utf-8") as fh:
        [row] = list(csv.DictReader(fh))  # one think cell has a no-think twin in this grid
    assert (row["think_cell"], row["nothink_cell"]) == (CELLS[0], CELLS[2])

    def items(cell):
        lines = (run / "results/eval" / cell / "reward-winrate/per_item.jsonl").read_text().splitlines()
        return {r["id"]: r["details"] for r in map(json.loads, lines)}

    think, nothink = items(CELLS[0]), items(CELLS[2])
    assert sorted(think) == sorted(nothink) and len(think) == 4  # the same prompts
    outcomes = []
    for i in think:  # the stated rule: the answer that exists wins; identical answers tie; else rewards within 1e-4 tie
        t, n = think[i].get("policy_reward"), nothink[i].get("policy_reward")
        if t is None or n is None:
            outcomes.append(0.5 if t is None and n is None else (0.0 if t is None else 1.0))
        elif think[i]["policy_answer_digest"] == nothink[i]["policy_answer_digest"]:
            outcomes.append(0.5)
        else:
            outcomes.append(1.0 if t - n > 1e-4 else (0.0 if t - n < -1e-4 else 0.5))
    assert int(row["n_paired"]) == 4
    assert float(row["win_rate"]) == pytest.approx(100 * sum(outcomes) / 4, rel=1e-12, abs=1e-12)
    assert float(row["ci_low"]) <= float(row["win_rate"]) <= float(row["ci_high"])
    report = (run / "results/report/report.md").read_text()
    assert "## Think versus no-think, head to head" in report and f"| {CELLS[0]} | {CELLS[2]} | 4 |" in report
    html = (run / "results/report/report.html").read_text()
    section = html.split("<h2>Think versus no-think, head to head</h2>")[1].split("</table>")[0]
    think_run = parent(CELLS[0])
    link = f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{think_run.info.run_id}"
    assert f"<td><a href='{link}'>{float(row['win_rate']):.1f}</a></td>" in section
    assert think_run.data.metrics["think_vs_nothink.win_rate"] == pytest.approx(float(row["win_rate"]), rel=1e-12)
    if row["lc_win_rate"] not in ("", "NaN", "nan"):
        assert think_run.data.metrics["think_vs_nothink.lc_win_rate"] == pytest.approx(float(row["lc_win_rate"]), rel=1e-12)


def test_training_runs_record_their_data_their_model_and_system_metrics(run):
    """The real SFT and RL jobs' MLflow runs: their data files as datasets (digests of the files on disk), the SFT
    policy as a logged model (path and digest), and system/* metrics at the config's interval (5 s; a run shorter
    than one interval still gets its sample)."""
    from mlflow.tracking import MlflowClient
    from test_mlflow_records import _expected_model_digest, _sha16

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("rlmt").experiment_id
    mixture = run / "results/data/mixtures/demo"

    def job(stage: str, tag: str, value: str):
        [found] = client.search_runs([exp_id], filter_string=f"tags.`rlmt.stage` = '{stage}' and tags.`{tag}` = '{value}'")
        got = client.get_run(found.info.run_id)  # search results leave a run's model outputs out
        assert got.info.status == "FINISHED" and "system/cpu_utilization_percentage" in got.data.metrics, got.info
        datasets = {d.dataset.name: (d.dataset.digest, {t.key: t.value for t in d.tags}["mlflow.data.context"])
                    for d in got.inputs.dataset_inputs}
        return got, datasets

    _, grpo = job("grpo", "rlmt.cell", CELLS[0])
    assert grpo == {"demo-train": (_sha16(mixture / "train.parquet"), "training"),
                    "demo-val": (_sha16(mixture / "val.parquet"), "validation")}
    _, dpo = job("dpo", "rlmt.cell", CELLS[1])  # DPO validates on its own split of its pairs, logged beside
    pairs = run / "results/checkpoints" / CELLS[1] / "pairs"
    assert dpo == {"demo-train": (_sha16(mixture / "train.parquet"), "training"),
                   f"{CELLS[1]}-pairs-train": (_sha16(pairs / "train.parquet"), "training"),
                   f"{CELLS[1]}-pairs-val": (_sha16(pairs / "val.parquet"), "validation")}
    for think in ("think", "nothink"):
        policy = f"llama-base__sft__{think}__demo-sft"
        sft, datasets = job("sft", "rlmt.model", policy)
        data = run / "results/data/sft/demo-sft" / f"{think}.jsonl"
        assert datasets == {f"demo-sft-{think}": (_sha16(data), "training")}
        [output] = sft.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.name == policy and model.source_run_id == sft.info.run_id
        assert model.tags["rlmt.checkpoint.path"] == str((run / "results/models" / policy).resolve())
        # the directory as the job wrote it: Snakemake adds its marker to a directory output after the job
        assert model.tags["rlmt.checkpoint.digest"] == _expected_model_digest(run / "results/models" / policy,
                                                                              SNAKEMAKE_MARKER)


def test_collect_attaches_the_scores_to_the_checkpoint_its_training_run_logged(run):
    """`eval collect --checkpoint results/checkpoints/<cell>/final` (rule model_scores) finds the logged model the
    training run made of that directory and gives it the scores; it makes no second model of the same weights
    (Snakemake's marker file, added to the directory after the training job, is not part of the model)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlruns.db'}")
    exp_id = client.get_experiment_by_name("rlmt").experiment_id
    for cell in CELLS:
        [train], [collect] = (client.search_runs([exp_id], filter_string=f"tags.`rlmt.rule` = '{rule}' and "
                                                 f"tags.`rlmt.cell` = '{cell}'") for rule in ("train", "model_scores"))
        [made] = client.get_run(train.info.run_id).outputs.model_outputs
        assert [m.model_id for m in client.get_run(collect.info.run_id).inputs.model_inputs] == [made.model_id], cell
        scores = json.loads((run / "results/eval" / cell / "demo-if" / "scores.json").read_text())["metrics"]["score"]
        got = {m.key: m.value for m in client.get_logged_model(made.model_id).metrics or []}
        assert got.get("demo_if.score") == pytest.approx(scores["value"], rel=1e-12, abs=1e-12), (cell, got)


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
        missing_component("mlflow CLI not found next to the interpreter")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", f"sqlite:///{run / 'mlruns.db'}",
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=run)
    try:
        base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        deadline = time.time() + 600  # a loaded 2-core machine takes minutes to start it (test_mlflow_ui.py)
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
    """A config edit reruns the jobs whose settings changed: here the GRPO cells' trainings and their evaluations, never
    the SFT the cells start from nor the DPO cell (the preflight check gates every run without being a job)."""
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
        assert counts["train"] == 2 and "preflight" not in counts  # the two GRPO cells
        assert f"wildcards: cell={CELLS[0]}" in planned and f"wildcards: cell={CELLS[2]}" in planned
        assert f"wildcards: cell={CELLS[1]}" not in planned
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
