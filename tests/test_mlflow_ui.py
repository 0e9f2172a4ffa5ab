"""Browsing runs as a user does: `mlflow server` on the store of a small real run, Debian's chromium.

Headless chromium (apt, /usr/bin/chromium; no browser download) is driven through playwright.
What is checked comes from the rendered page. Screenshots go to $RLMT_TEST_ARTIFACTS (default
tests/artifacts/, ignored by git); their paths are printed.

MLflow 3.17.2's UI picks an experiment's landing page from its workflow toggle (GenAI by default,
remembered per browser, or ``?workflowType=machine_learning`` in the address), not from the
``mlflow.experimentKind`` tag alone: the address we document opens the runs table.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ML = "workflowType=machine_learning"
GRPO_CELL = "grpo__llama-base__warm-start__think__tiny-rm__demo"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Work in progress (issue 17): only the samples-table check has passed so far; the reward-chart selector
# fails and the parents/sort checks have not run to the end. Deselected from `make test` until they pass.
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(3000)]


def artifacts_dir() -> Path:
    out = Path(os.environ.get("RLMT_TEST_ARTIFACTS") or ROOT / "tests/artifacts") / "mlflow_ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store of a real two-cell Snakemake run (tests/test_e2e.py's grid), or $RLMT_UI_STORE_DIR's."""
    if os.environ.get("RLMT_UI_STORE_DIR"):  # a run made earlier by this same fixture, to iterate on the UI checks
        return Path(os.environ["RLMT_UI_STORE_DIR"])
    from test_e2e import _mini_config, _snakemake

    workdir = tmp_path_factory.mktemp("ui")
    cfg = _mini_config()
    cfg["evaluation"]["benchmarks"] = {"demo-if": {"limit": 4}}
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _snakemake(workdir, "--cores", "2", "all", timeout=2400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def server(store):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                             str(port), "--backend-store-uri", f"sqlite:///{store / 'mlruns.db'}", "--workers", "1"],
                            cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a loaded 2-core machine takes minutes to start it
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=rlmt",
                                        timeout=10) as r:
                exp_id = json.load(r)["experiment"]["experiment_id"]
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "mlflow server did not come up"
            time.sleep(2)
    yield base, exp_id
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="module")
def page(server):
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1600, "height": 1000})
        pg = browser.new_page()
        pg.set_default_timeout(240_000)
        yield pg
        browser.close()


def _shot(pg, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    pg.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _runs(server_base: str, exp_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [exp_id], "filter": filter_string, "max_results": 200}).encode()
    req = urllib.request.Request(f"{server_base}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r).get("runs", [])


def test_experiment_opens_on_its_runs_with_cells_as_parents(server, page, store):
    base, exp_id = server
    page.goto(f"{base}/#/experiments/{exp_id}?{ML}")
    page.get_by_text("matching runs").wait_for()
    assert "/runs" in page.url, page.url
    assert "No data available" not in page.inner_text("body")  # not the GenAI traces overview
    cells = sorted(p.name for p in (store / "results/eval").iterdir() if (p / "scores.json").exists()
                   and "__" in p.name and p.name.split("__")[0] in ("grpo", "dpo", "ppo", "sft"))
    assert len(cells) == 2, cells
    for cell in cells:
        assert page.get_by_text(cell, exact=True).count() >= 1, f"cell parent {cell} not listed"
    # A parent's children appear when it is expanded.
    assert page.get_by_text(f"grpo:{GRPO_CELL}", exact=True).count() == 0
    row = page.get_by_role("row").filter(has_text=GRPO_CELL).first
    row.locator("button, [role=button]").first.click()
    page.get_by_text(f"grpo:{GRPO_CELL}", exact=True).wait_for()
    _shot(page, "runs_table_cells_expanded")


def test_a_grpo_run_has_a_reward_chart(server, page):
    base, exp_id = server
    run = next(r for r in _runs(base, exp_id, f"tags.`rlmt.cell` = '{GRPO_CELL}' and tags.`rlmt.rule` = 'train'"))
    run_id = run["info"]["run_id"]
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/model-metrics?{ML}")
    page.get_by_placeholder("Search metric charts").fill("reward")
    title = page.get_by_text("reward", exact=True).first
    title.wait_for()
    title.scroll_into_view_if_needed()
    page.wait_for_timeout(3000)
    charts = page.locator("svg.main-svg, canvas, .js-plotly-plot")
    assert charts.count() >= 1, "no chart rendered"
    _shot(page, "grpo_reward_chart")


def test_a_samples_table_renders_thought_and_answer(server, page):
    base, exp_id = server
    run = next(r for r in _runs(base, exp_id, f"tags.`rlmt.cell` = '{GRPO_CELL}' and tags.`rlmt.rule` = 'train'"))
    run_id = run["info"]["run_id"]
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts?{ML}")
    page.get_by_text("samples", exact=True).first.click()
    page.get_by_text("step-000001.json").first.click()
    for column in ("prompt", "thought", "answer", "reward"):
        page.get_by_role("columnheader", name=column, exact=True).first.wait_for()
    _shot(page, "grpo_samples_table")


def test_the_runs_table_sorts_cells_by_their_average_score(server, page, store):
    """The cells' parents, sorted by score.avg from the address the sort controls write."""
    base, exp_id = server
    scores = {}
    for path in (store / "results/eval").glob("*/scores.json"):
        doc = json.loads(path.read_text())
        if doc.get("cell"):
            values = [b["value"] for b in doc["benchmarks"].values()]
            scores[doc["cell"]] = sum(values) / len(values)
    assert len(scores) == 2, scores
    page.goto(f"{base}/#/experiments/{exp_id}/runs?{ML}&orderByKey=metrics.%60score.avg%60&orderByAsc=false"
              "&searchFilter=tags.%60rlmt.is_parent%60%20%3D%20%27true%27")
    page.get_by_text("matching runs").wait_for()
    for cell in scores:
        page.get_by_text(cell, exact=True).first.wait_for()
    page.get_by_text("score.avg").first.wait_for()  # the sorted-by column is shown
    text = page.inner_text("body")
    shown = sorted(scores, key=text.index)
    expected = sorted(scores, key=lambda c: -scores[c])
    if scores[expected[0]] != scores[expected[1]]:
        assert shown == expected, (shown, scores)
    path = _shot(page, "runs_table_sorted_by_avg")
    if os.environ.get("RLMT_UPDATE_DOCS_SCREENSHOT"):
        import shutil

        shutil.copy(path, ROOT / "docs/mlflow-runs.png")
