"""Browsing runs as a user does: `mlflow server` on the store of a small real run, Debian's chromium.

Headless chromium (apt, /usr/bin/chromium; no browser download) is driven through playwright.
What is checked comes from the rendered page; what it is checked against comes from the run's own
files (results/eval/*/scores.json) and the tracking server's REST API, never from the page itself.
Screenshots go to $RLMT_TEST_ARTIFACTS/mlflow_ui (default tests/artifacts/mlflow_ui, ignored by git);
their paths are printed. RLMT_UI_STORE_DIR=<a workdir this module's `store` fixture made> skips the
10-20 minute Snakemake run. RLMT_UPDATE_DOCS_SCREENSHOT=1 copies the sorted runs table to docs/.

MLflow 3.17.2's UI picks an experiment's landing page from its workflow toggle (GenAI by default,
remembered per browser, or ``?workflowType=machine_learning`` in the address), not from the
``mlflow.experimentKind`` tag alone: the address we document opens the runs table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(3000)]


def artifacts_dir() -> Path:
    out = Path(os.environ.get("RLMT_TEST_ARTIFACTS") or ROOT / "tests/artifacts") / "mlflow_ui"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """The store of a real two-cell Snakemake run (tests/test_e2e.py's settings), or $RLMT_UI_STORE_DIR's."""
    if os.environ.get("RLMT_UI_STORE_DIR"):  # a run made earlier by this same fixture, to iterate on the UI checks
        return Path(os.environ["RLMT_UI_STORE_DIR"])
    from test_e2e import _mini_config, _snakemake

    workdir = tmp_path_factory.mktemp("ui")
    cfg = _mini_config()
    # Two cells (GRPO think, DPO no-think): enough for parents, children and a sort; the e2e grid's third is not needed.
    cfg["grid"] = [
        {"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True], "rm": ["tiny-rm"], "mixture": ["demo"]},
        {"algo": ["dpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [False], "rm": ["tiny-rm"], "mixture": ["demo"]},
    ]
    # The tiny policies score 0 on demo-if; the reward-model win rate is what sets the two cells' score.avg apart.
    cfg["evaluation"]["benchmarks"] = {"demo-if": {"limit": 4}, "reward-winrate": {"limit": 8}}
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
            exp_id = _get(base, "experiments/get-by-name", experiment_name="rlmt")["experiment"]["experiment_id"]
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
        pytest.fail("Debian's chromium is not installed: apt-get install -y --no-install-recommends chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        browser = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                       args=CHROMIUM_ARGS, viewport={"width": 1920, "height": 1000})
        pg = browser.new_page()
        pg.set_default_timeout(240_000)
        yield pg
        browser.close()


def _shot(pg, name: str) -> Path:
    path = artifacts_dir() / f"{name}.png"
    pg.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _get(base: str, endpoint: str, **params) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


def _runs(server_base: str, exp_id: str, filter_string: str) -> list[dict]:
    body = json.dumps({"experiment_ids": [exp_id], "filter": filter_string, "max_results": 200}).encode()
    req = urllib.request.Request(f"{server_base}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r).get("runs", [])


def _one_run(base: str, exp_id: str, filter_string: str) -> dict:
    runs = _runs(base, exp_id, filter_string)
    assert len(runs) == 1, (filter_string, [r["info"]["run_name"] for r in runs])
    return runs[0]


def _grpo_train_run(base: str, exp_id: str) -> dict:
    return _one_run(base, exp_id, f"tags.`rlmt.cell` = '{GRPO_CELL}' and tags.`rlmt.rule` = 'train'")


def _cell_scores(store: Path) -> dict[str, float]:
    """Each cell's mean headline score, from the run's own score files (not from MLflow)."""
    scores = {}
    for path in (store / "results/eval").glob("*/scores.json"):
        doc = json.loads(path.read_text())
        if doc.get("cell"):
            values = [b["value"] for b in doc["benchmarks"].values()]
            scores[doc["cell"]] = sum(values) / len(values)
    return scores


def _open_runs_table(pg, url: str) -> None:
    pg.goto(url)
    pg.get_by_text(re.compile(r"\d+ matching runs")).wait_for()
    close = pg.get_by_role("button", name="Close", exact=True)  # the MLflow Assistant side panel: more table
    if close.count() == 1 and close.is_visible():
        close.click()


def _run_link(pg, run_name: str):
    """The link to the run named run_name (not a logged model's link of the same name)."""
    return pg.get_by_role("link", name=run_name, exact=True).and_(pg.locator("a[href*='/runs/']"))


def _row_index(pg, run_name: str) -> int:
    """The runs table's row (aria-rowindex) that shows the run named run_name."""
    row = pg.get_by_role("row").filter(has=_run_link(pg, run_name))
    row.first.wait_for()
    assert row.count() == 1, f"{run_name} shown in {row.count()} rows"
    return int(row.get_attribute("aria-rowindex"))


def test_experiment_opens_on_its_runs_with_cells_as_parents(server, page, store):
    base, exp_id = server
    _open_runs_table(page, f"{base}/#/experiments/{exp_id}?{ML}")
    assert re.search(rf"#/experiments/{exp_id}/runs\b", page.url), page.url  # the runs table, not the GenAI overview
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    page.get_by_role("columnheader", name="Run Name", exact=True).first.wait_for()
    assert "No data available" not in page.inner_text("body")
    cells = sorted(p.name for p in (store / "results/eval").iterdir() if (p / "scores.json").exists()
                   and "__" in p.name and p.name.split("__")[0] in ("grpo", "dpo", "ppo", "sft"))
    assert len(cells) == 2 and GRPO_CELL in cells, cells
    parents = {r["info"]["run_name"]: r["info"]["run_id"]
               for r in _runs(base, exp_id, "tags.`rlmt.is_parent` = 'true'")}
    assert set(parents) == set(cells), (parents, cells)
    for cell in cells:
        _row_index(page, cell)  # each cell is a top-level row, as a link to its parent run
    children = sorted(r["info"]["run_name"] for r in _runs(base, exp_id,
                                                           f"tags.mlflow.parentRunId = '{parents[GRPO_CELL]}'"))
    assert f"grpo:{GRPO_CELL}" in children and any(c.startswith("generate:") for c in children), children
    for child in children:  # collapsed: the children are not rows yet
        assert _run_link(page, child).count() == 0, f"{child} shown before expanding"
    # The parent's expander is the one button in its name cell; expanding lists its children under it.
    page.get_by_role("gridcell").filter(has=_run_link(page, GRPO_CELL)).get_by_role("button").click()
    parent_row = _row_index(page, GRPO_CELL)
    rows = {child: _row_index(page, child) for child in children}
    assert all(i > parent_row for i in rows.values()), (parent_row, rows)
    other = next(c for c in cells if c != GRPO_CELL)
    assert _run_link(page, f"{other.split('__')[0]}:{other}").count() == 0, "a collapsed cell's child is shown"
    _shot(page, "runs_table_cells_expanded")


def test_a_grpo_run_has_a_reward_chart(server, page):
    base, exp_id = server
    run = _grpo_train_run(base, exp_id)
    run_id, run_name = run["info"]["run_id"], run["info"]["run_name"]
    history = _get(base, "metrics/get-history", run_id=run_id, metric_key="reward")["metrics"]
    assert len(history) >= 2, history  # max_steps=2: one reward per step
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/model-metrics?{ML}")
    page.get_by_role("heading", name=run_name, exact=True).wait_for()
    page.get_by_placeholder("Search metric charts").fill("reward")
    title = page.get_by_role("heading", name="reward", exact=True)
    # "reward" also matches the rewards/* and eval_* charts, grouped in sections above it; cards render when seen.
    page.mouse.move(800, 600)
    for _ in range(40):
        if title.count():
            break
        page.mouse.wheel(0, 600)
        page.wait_for_timeout(1000)
    title.wait_for()
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has=title)
    assert card.count() == 1
    card.scroll_into_view_if_needed()
    card.get_by_text(f"{run_name} (reward)", exact=True).wait_for()  # the legend: this run's reward series
    points = card.locator(".js-plotly-plot path.point")
    points.first.wait_for()
    page.wait_for_timeout(1000)
    assert points.count() == len(history), (points.count(), history)  # one marker per logged step
    line = card.locator(".js-plotly-plot path.js-line").first.get_attribute("d")
    assert line and line.startswith("M") and "L" in line, line
    _shot(page, "grpo_reward_chart")


def test_a_samples_table_renders_thought_and_answer(server, page):
    base, exp_id = server
    run = _grpo_train_run(base, exp_id)
    run_id = run["info"]["run_id"]
    files = sorted(f["path"] for f in _get(base, "artifacts/list", run_id=run_id, path="samples").get("files", []))
    assert files and all(re.fullmatch(r"samples/step-\d{6}\.json", f) for f in files), files
    with urllib.request.urlopen(f"{base}/get-artifact?{urllib.parse.urlencode({'path': files[0], 'run_uuid': run_id})}",
                                timeout=60) as r:
        table = json.load(r)
    first = dict(zip(table["columns"], table["data"][0]))
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{run_id}/artifacts?{ML}")
    page.get_by_text("samples", exact=True).first.click()
    page.get_by_text(files[0].split("/")[1], exact=True).first.click()
    headers = page.get_by_role("columnheader").filter(has_text=re.compile(r"^thought$"))
    headers.first.wait_for()
    shown = set(page.get_by_role("columnheader").all_inner_texts())
    assert {"prompt", "thought", "answer", "reward"} <= shown, shown
    page.get_by_role("cell").filter(has_text=first["prompt"]).first.wait_for()
    words = re.match(r"[A-Za-z0-9 ]*", first["thought"]).group(0).strip()
    if len(words) >= 8:  # the first row's thought (tiny policies write noise; its printable start is enough)
        page.get_by_role("cell").filter(has_text=words[:24]).first.wait_for()
    _shot(page, "grpo_samples_table")


def test_the_runs_table_sorts_cells_by_their_average_score(server, page, store):
    """A user filters the table to the cells' parents and sorts them by score.avg with the Sort control."""
    base, exp_id = server
    scores = _cell_scores(store)
    assert len(scores) == 2, scores
    _open_runs_table(page, f"{base}/#/experiments/{exp_id}?{ML}")
    search = page.get_by_placeholder("metrics.rmse", exact=False)
    search.fill("tags.`rlmt.is_parent` = \"true\"")
    search.press("Enter")
    page.get_by_text("2 matching runs", exact=True).wait_for()
    page.get_by_role("button", name=re.compile(r"^Sort: ")).click()
    page.get_by_role("menu").get_by_placeholder("Search").fill("score.avg")  # one of ~300 metric/param keys
    page.get_by_role("menuitemcheckbox", name="score.avg", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_role("button", name="Sort: score.avg", exact=True).wait_for()
    assert "orderByKey=metrics.%60score.avg%60" in page.url and "orderByAsc=false" in page.url, page.url
    # Widen the name column so that the cells' names read in full.
    headers = page.locator("[role=columnheader][aria-colindex]")
    box = headers.filter(has=page.get_by_text("Run Name", exact=True)).first.bounding_box()
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 240, y, steps=20)
    page.mouse.up()

    def shown() -> list[tuple[int, str, float]]:
        """(row, cell, score.avg) as the table shows them, top row first."""
        page.get_by_role("columnheader", name="score.avg", exact=True).first.wait_for()  # the sorted-by column
        col = next(h.get_attribute("aria-colindex") for h in page.locator("[role=columnheader][aria-colindex]").all()
                   if h.inner_text().strip() == "score.avg")
        out = []
        for cell in scores:
            i = _row_index(page, cell)
            value = page.locator(f'[role=row][aria-rowindex="{i}"] [role=gridcell][aria-colindex="{col}"]')
            out.append((i, cell, float(value.first.inner_text())))
        return sorted(out)

    rows = shown()
    for _, cell, value in rows:  # the page's score.avg is the mean of the cell's score files (shown rounded)
        assert abs(value - scores[cell]) <= 0.01, (cell, value, scores[cell])
    order = [cell for _, cell, _ in rows]
    assert scores[order[0]] >= scores[order[1]], (order, scores)  # best cell on top
    path = _shot(page, "runs_table_sorted_by_avg")
    page.get_by_role("button", name="Sort: score.avg", exact=True).click()
    page.get_by_role("button", name="Sort ascending", exact=True).click()
    page.keyboard.press("Escape")
    page.wait_for_url(re.compile(r"orderByAsc=true"))
    page.wait_for_timeout(2000)
    flipped = sorted(scores, key=lambda cell: _row_index(page, cell))  # (the names' rows; the values were read above)
    if scores[order[0]] != scores[order[1]]:
        assert flipped == order[::-1], (order, flipped, scores)
    else:
        pytest.fail(f"the two cells tie on score.avg ({scores}): the sort cannot be told from the default order")
    if os.environ.get("RLMT_UPDATE_DOCS_SCREENSHOT"):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(path, ROOT / "docs/mlflow-runs.png")
