"""Every command in the README is run by this test or by CI, as written.

The README's fenced blocks are ``bash`` (commands) or ``text`` (the pipeline picture); each command of
a ``bash`` block must be in :data:`COMMANDS`, which says how it is run:

* ``run``: here, as written, in README order, in a copy of the working tree (a fresh clone's files:
  tracked and untracked-but-not-ignored) with ``HOME`` inside the test's directory; each has a check of
  what it printed or made;
* ``dry``: a Snakemake run, here with ``-n`` added (it plans every job and runs none); the real runs
  are CI's (``snakemake all`` is what ``make run`` runs, and the end-to-end tests run it; the Slurm
  submission is what ``make test-slurm`` exercises on a real cluster);
* ``env``: an ``export``: it sets the environment of the commands after it;
* ``server``: started as written (the port from ``MLFLOW_PORT``, which ``mlflow ui`` reads), asked for
  its experiments over HTTP, stopped;
* ``make``: a Makefile target, which must exist (and the ones CI runs must be in ``.ci/run``).

A README command missing from :data:`COMMANDS` fails :func:`test_every_readme_command_is_known`, and so
does an entry of :data:`COMMANDS` that the README no longer has.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
ONE_CELL = "grpo__llama-base__warm-start__think__tiny-rm__demo"


# ---------------------------------------------------------------------- reading the README


def fenced_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(info string, lines) of every fenced block."""
    blocks, current, info = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, info = [], line[3:].strip()
            else:
                blocks.append((info, current))
                current = None
        elif current is not None:
            current.append(line)
    assert current is None, "an unclosed fenced block"
    return blocks


def commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks, in order: comments and blank lines left out, a trailing
    ``# comment`` removed, ``\\``-continued lines joined."""
    found = []
    for info, lines in fenced_blocks(text):
        if info != "bash":
            continue
        pending = ""
        for raw in lines:
            line = re.sub(r"\s+#.*$", "", raw).strip() if not raw.lstrip().startswith("#") else ""
            if not line:
                continue
            if line.endswith("\\"):
                pending += line[:-1].strip() + " "
                continue
            found.append(pending + line)
            pending = ""
    return found


# ---------------------------------------------------------------------- how each command is run and checked


@dataclass
class Outcome:
    code: int
    out: str  # stdout and stderr together
    home: Path
    copy: Path


def job_counts(out: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run: rule -> jobs (and 'total')."""
    table = out[out.index("Job stats:"):].split("\n\n")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


# config/config.yaml's grid by hand: grpo/ppo/dpo x llama-base/qwen-base x think/nothink, warm start, tiny-rm, demo;
# and GRPO llama-base think on the length-debiased tiny-rm-odin
DEFAULT_CELLS = sorted([*(f"{a}__{b}__warm-start__{t}__tiny-rm__demo" for a in ("grpo", "ppo", "dpo")
                          for b in ("llama-base", "qwen-base") for t in ("think", "nothink")),
                        "grpo__llama-base__warm-start__think__tiny-rm-odin__demo"])


def _cells_default(o: Outcome) -> None:
    assert o.code == 0, o.out
    assert sorted(line for line in o.out.splitlines() if "__" in line and " " not in line) == DEFAULT_CELLS


def _cells_paper(o: Outcome) -> None:
    assert o.code == 0, o.out
    cells = [line for line in o.out.splitlines() if "__" in line and " " not in line]
    # config/paper.yaml's grid rows by hand: GRPO 8 + 4 (zero) + 4 (RM ablation) + 2 (mixtures) + 2 (SFT teacher)
    # + 1 (OpenThinker2) + 2 (the rubric and mix rewards, an extension) = 23; PPO and DPO 8 + 4 each: 47, as the
    # README says
    assert len(cells) == len(set(cells)) == 47


def _one_cell(o: Outcome) -> None:
    assert o.code == 0, o.out
    # the chain of one cell, by hand: prepare llama-base, llama-instruct (its chat template, and the win rate's
    # reference model) and tiny-rm; the SFT data, the mixture and the two benchmarks' items; one SFT and one
    # training; generations for the cell's demo-if and reward win rate and the reference's win-rate answers;
    # their scores; the cell's collected scores. No report (that needs every cell).
    assert job_counts(o.out) == {"prepare_model": 3, "sft_data": 1, "curate": 1, "benchmark_items": 2, "sft": 1,
                                 "train": 1, "generate": 3, "score": 1, "score_winrate": 1, "model_scores": 1,
                                 "total": 15}
    assert set(re.findall(r"results/checkpoints/([^/\s]+)/", o.out)) == {ONE_CELL}


def _dry_run_all(o: Outcome) -> None:
    assert o.code == 0, o.out
    counts = job_counts(o.out)
    # the README's 95 jobs: 13 trainings, 4 SFT policies (2 families x think/nothink), one length calibration
    # (the debiased reward's fit), one report
    assert (counts["total"], counts["train"], counts["sft"], counts["reward_calibration"], counts["report"]) == \
        (95, 13, 4, 1, 1)


def _profile_installed(o: Outcome) -> None:
    assert o.code == 0, o.out
    installed = o.home / ".config/snakemake/slurm/config.yaml"
    assert installed.read_text() == (o.copy / "profiles/slurm/config.yaml").read_text()


def _preflight(o: Outcome) -> None:
    assert o.code == 0, o.out
    assert re.search(r"^47 cells: 0 blocker\(s\)", o.out, re.M), o.out[-3000:]


def _slurm_submission(o: Outcome) -> None:
    assert o.code == 0, o.out[-3000:]
    assert "Using profiles slurm " in o.out  # the profile installed in ~/.config/snakemake above
    assert job_counts(o.out)["train"] == 47
    assert re.search(r"^rule train:(?:\n    .*)*\n    resources: .*slurm_partition=", o.out, re.M)


def _mlflow_ui(o: Outcome) -> None:
    assert o.code == 0, o.out
    experiments = json.loads(o.out)["experiments"]
    assert [e["name"] for e in experiments] == ["Default"]  # a new store, served
    assert (o.copy / "mlruns.db").is_file()


@dataclass
class How:
    kind: str  # run | dry | env | server | make
    check: Callable[[Outcome], None] | None = None
    ci: bool = False  # a make target CI runs (.ci/run)


COMMANDS: dict[str, How] = {
    "make run": How("make"),
    "make test": How("make", ci=True),
    "rlmt config cells": How("run", _cells_default),
    "rlmt config cells -c config/paper.yaml": How("run", _cells_paper),
    f"snakemake results/eval/{ONE_CELL}/scores.json": How("dry", _one_cell),
    "snakemake -n all": How("run", _dry_run_all),
    "mkdir -p ~/.config/snakemake && cp -r profiles/slurm ~/.config/snakemake/slurm": How("run", _profile_installed),
    "export OPENAI_API_KEY=... GEMINI_API_KEY=...": How("env"),
    "rlmt preflight -c config/paper.yaml": How("run", _preflight),
    "snakemake --profile slurm --configfile=config/paper.yaml": How("dry", _slurm_submission),
    "mlflow ui --backend-store-uri sqlite:///mlruns.db": How("server", _mlflow_ui),
}


def test_every_readme_command_is_known():
    text = README.read_text()
    infos = {info for info, _ in fenced_blocks(text)}
    assert infos <= {"bash", "text"}, f"fenced blocks must be `bash` (commands) or `text`: {infos}"
    found = commands(text)
    assert [c for c in found if c not in COMMANDS] == [], "README commands neither run by this test nor known"
    assert [c for c in COMMANDS if c not in found] == [], "entries the README no longer has"


def test_the_readme_is_a_short_read():
    assert len(README.read_text().splitlines()) <= 220


def test_every_relative_link_of_the_readme_resolves():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local and [t for t in local if not (ROOT / t).exists()] == []


def test_the_make_targets_exist_and_ci_runs_the_ones_it_should():
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for command, how in COMMANDS.items():
        if how.kind != "make":
            continue
        target = command.split()[1]
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no Makefile target {target!r}"
        assert re.search(rf"^\.PHONY:.*\b{re.escape(target)}\b", makefile, re.M)
        if how.ci:
            assert re.search(rf"^make {re.escape(target)}$", ci, re.M), f"{command!r} is not in .ci/run"
    # make run's recipe is the whole default workflow (snakemake all), which the end-to-end tests run
    recipe = makefile[makefile.index("\nrun:"):].split("\n\n")[0]
    assert re.search(r"snakemake all$", recipe, re.M)


# ---------------------------------------------------------------------- running them


def _working_tree_copy(dest: Path) -> Path:
    """The files a fresh clone of the working tree has: tracked, plus untracked files git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=120).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(command: str, cwd: Path, env: dict) -> Outcome:
    port = _free_port()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env={**env, "MLFLOW_PORT": str(port)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/search?max_results=10"
    try:
        deadline = time.time() + 240  # the server's imports take a while on a loaded 2-core machine
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return Outcome(0, response.read().decode(), Path(env["HOME"]), cwd)
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    return Outcome(1, proc.stdout.read().decode() if proc.poll() is not None else "no answer", Path(env["HOME"]), cwd)
                time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("readme")
    copy, home = _working_tree_copy(base / "rlmt"), base / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    done = {}
    for command in commands(README.read_text()):
        how = COMMANDS[command]
        if how.kind == "env":
            for assignment in shlex.split(command)[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
        elif how.kind == "server":
            done[command] = _serve(command, copy, env)
        elif how.kind in ("run", "dry"):
            line = re.sub(r"^snakemake ", "snakemake -n ", command) if how.kind == "dry" else command
            proc = subprocess.run(["bash", "-c", line], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
            done[command] = Outcome(proc.returncode, proc.stdout + proc.stderr, home, copy)
    return done


@pytest.mark.slow
@pytest.mark.parametrize("command", [c for c, how in COMMANDS.items() if how.check is not None])
def test_the_readme_command_does_what_the_readme_says(outcomes, command):
    COMMANDS[command].check(outcomes[command])
