"""The experiment plan and the Snakemake DAG (dry runs; the real run is in test_e2e.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlmt.config import load_config
from rlmt.workflow import Plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper() -> Plan:
    return Plan(load_config(ROOT / "config/paper.yaml"))


@pytest.fixture(scope="module")
def default() -> Plan:
    return Plan(load_config(ROOT / "config/config.yaml"))


def _job_counts(stdout: str) -> dict[str, int]:
    block = stdout.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M)}


def test_policy_names_round_trip(paper):
    for cell in paper.cells:
        parsed = paper.parse_policy(cell.policy_name)
        assert parsed["base"] == cell.base and parsed["start"] == cell.start and parsed["think"] == cell.think


def test_default_grid_covers_both_families_all_algorithms_and_thinking(default):
    combos = {(c.base.split("-")[0], c.algo, c.think) for c in default.cells}
    assert combos == {(f, a, t) for f in ("llama", "qwen") for a in ("grpo", "ppo", "dpo") for t in (True, False)}
    assert set(default.eval_models) >= set(default.cell_names)


def test_settings_digest_changes_only_for_matching_cells(paper):
    cells = paper.cells
    before = {c.name: paper.settings_digest(c.algo, c) for c in cells}
    cfg = paper.cfg.model_copy(deep=True)
    cfg.overrides[0].grpo["learning_rate"] = 5e-7  # the instruct-model override
    after = {c.name: Plan(cfg).settings_digest(c.algo, c) for c in cells}
    changed = {n for n in before if before[n] != after[n]}
    assert changed and all("instruct" in n and n.startswith("grpo") for n in changed)


def test_paper_grid_dry_run_plans_every_training_cell():
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", "all"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = _job_counts(proc.stdout)
    assert counts["train"] >= 40
    assert counts["judge"] > 0 and counts["generate"] >= counts["train"]
    assert counts["report"] == 1


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/paper.yaml"])
def test_lint_is_clean(configfile):
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", f"--configfile={configfile}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Congratulations" in proc.stdout + proc.stderr
