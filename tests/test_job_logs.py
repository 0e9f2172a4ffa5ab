"""Job logs (rlmt.joblog): every `rlmt` command's log opens and closes with rlmt's own lines, in one format.

Commands run as a Snakemake rule runs them: `python -m rlmt.cli ...` in a subprocess, stdout and stderr
into one log file. Expected values are written by hand from the command line given, or computed
independently of rlmt (sha256 of the files written, with hashlib).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from tqdm import tqdm
from typer.testing import CliRunner

from rlmt.cli import app

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "config.yaml"
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def run_logged(args: list[str], cwd: Path, log: Path, env: dict | None = None) -> tuple[int, list[str]]:
    """`python -m rlmt.cli ARGS > log 2>&1`, as a rule runs it (no terminal): exit code and the log's lines."""
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns.db'}", **(env or {})}
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, "-m", "rlmt.cli", *args], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                              env=environment, timeout=600)
    return done.returncode, log.read_text().splitlines()


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


SFT_DATA = ["data", "sft", "--config", str(CONFIG), "--name", "demo-sft", "--out-think", "sft/think.jsonl",
            "--out-nothink", "sft/nothink.jsonl"]


def test_a_jobs_log_opens_and_closes_with_rlmts_lines(tmp_path):
    code, lines = run_logged(SFT_DATA, tmp_path, tmp_path / "sft_data.log")
    assert code == 0, "\n".join(lines)
    # the first line: the command and its arguments, as given (stage, inputs, outputs)
    assert re.fullmatch(rf"{STAMP} INFO rlmt: start rlmt data sft \(pid \d+ on [^)]+\): "
                        + re.escape(" ".join(SFT_DATA[2:])), lines[0]), lines[0]
    # the last line: what it wrote (with the digests of the files, sha256 by hashlib here) and how long it took
    think, nothink = tmp_path / "sft/think.jsonl", tmp_path / "sft/nothink.jsonl"
    assert re.fullmatch(rf"{STAMP} INFO rlmt: done rlmt data sft in \d+\.\d s; outputs: "
                        + re.escape(f"think=sft/think.jsonl@{sha16(think)}, nothink=sft/nothink.jsonl@{sha16(nothink)}"),
                        lines[-1]), lines[-1]
    # between them: the MLflow run and the settings, from rlmt.tracking; the command's own print
    body = "\n".join(lines)
    assert re.search(rf"{STAMP} INFO rlmt.tracking: stage sft_data, cell -: MLflow run sft_data:demo-sft \([0-9a-f]{{32}}\)",
                     body)
    assert re.search(rf"{STAMP} INFO rlmt.tracking: settings: sft_data=demo-sft, .*path=package:demo_sft", body)
    assert "demo-sft: in=40 kept=39 -> sft/think.jsonl, sft/nothink.jsonl" in lines
    # a new MLflow store is created by this job: its migrations' notices do not reach the log at info
    assert not any("alembic" in line or "mlflow.store" in line or "Creating initial MLflow" in line for line in lines)


def test_log_level_debug_shows_more(tmp_path):
    _, info = run_logged(SFT_DATA, tmp_path, tmp_path / "info.log")
    (tmp_path / "mlruns.db").unlink()  # a new store again: its creation is what debug shows
    _, debug = run_logged(["--log-level", "debug", *SFT_DATA], tmp_path, tmp_path / "debug.log")
    assert not any(" DEBUG " in line for line in info)
    assert any(re.match(rf"{STAMP} DEBUG rlmt.tracking: settings left unset: ", line) for line in debug)
    assert any(re.match(rf"{STAMP} INFO mlflow.store\.", line) for line in debug)  # quiet below debug
    assert len(debug) > len(info)
    assert debug[0].endswith(" ".join(SFT_DATA[2:])) and " INFO rlmt: done rlmt data sft in " in debug[-1]


def test_a_failing_command_says_so_on_its_last_line(tmp_path):
    code, lines = run_logged(["config", "validate", "-c", "missing.yaml"], tmp_path, tmp_path / "bad.log")
    assert code == 2
    assert re.fullmatch(rf"{STAMP} INFO rlmt: start rlmt config validate \(pid \d+ on [^)]+\): -c missing.yaml", lines[0])
    assert "config file not found: missing.yaml" in lines
    assert re.fullmatch(rf"{STAMP} ERROR rlmt: rlmt config validate exited with code 2 after \d+\.\d s", lines[-1])


def test_an_unknown_log_level_is_refused(tmp_path):
    result = CliRunner().invoke(app, ["--log-level", "loud", "config", "cells", "-c", str(CONFIG)])
    words = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())  # the message, out of its box
    assert result.exit_code == 2 and "log level 'loud': allowed debug, info, warning, error" in words


def test_the_configs_log_level_applies_unless_the_command_line_sets_one(tmp_path):
    import yaml

    doc = yaml.safe_load(CONFIG.read_text())
    doc["tracking"]["log_level"] = "debug"
    config = tmp_path / "debug.yaml"
    config.write_text(yaml.safe_dump(doc))
    args = [*SFT_DATA[:2], "--config", str(config), *SFT_DATA[4:]]
    _, from_config = run_logged(args, tmp_path, tmp_path / "a.log")
    _, overridden = run_logged(["--log-level", "info", *args], tmp_path, tmp_path / "b.log")
    assert any(" DEBUG rlmt.tracking: settings left unset: " in line for line in from_config)
    assert not any(" DEBUG " in line for line in overridden)


# ---------------------------------------------------------------------- progress bars in a file


def test_progress_bars_become_periodic_lines_in_a_file():
    """A real tqdm bar drawn into a log file: its first state, one line per interval, its last state."""
    from rlmt import joblog

    now = [0.0]
    out = io.StringIO()
    stream = joblog.ProgressLines(out, interval=30, clock=lambda: now[0])
    with tqdm(total=100, desc="generate", file=stream, mininterval=0, ncols=60, ascii=True) as bar:
        for step in range(100):
            now[0] = step * 2.0  # a step every 2 s: lines at 0 s, then at 30 s, 60 s, 90 s (steps 15, 30, 45)
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and "" not in lines
    counts = [int(re.search(r"(\d+)/100", line).group(1)) for line in lines]
    # worked by hand: the bar's creation draws 0/100 at 0 s (its first line); the update at step k (clock 2k s)
    # draws k+1 done; the first at >= 30 s after that line is step 15 (16 done), then steps 30, 45, 60, 75, 90
    # (31 ... 91 done); the closing draw (100/100, at 198 s) is held, then written when the bar finishes
    assert counts == [0, 16, 31, 46, 61, 76, 91, 100], lines
    assert all(line.startswith("generate:") for line in lines)


def test_other_writes_pass_through_the_progress_stream_unchanged():
    from rlmt import joblog

    out = io.StringIO()
    stream = joblog.ProgressLines(out, interval=30, clock=lambda: 0.0)
    stream.write("a plain line\n")
    stream.write("\r" + " " * 20)  # a bar clearing its line: dropped
    stream.write("partial ")
    stream.write("\n")  # print()'s separate newline is kept
    assert out.getvalue() == "a plain line\npartial \n"


def test_a_finished_bar_is_not_written_twice():
    """A bar whose last state was already a line (tqdm redraws it on close) ends with that one line."""
    from rlmt import joblog

    now = [0.0]
    out = io.StringIO()
    stream = joblog.ProgressLines(out, interval=30, clock=lambda: now[0])
    stream.write("\rreward:   0%|   | 0/8")
    now[0] = 31.0
    stream.write("\rreward: 100%|###| 8/8")  # 31 s after the first line: written
    stream.write("\rreward: 100%|###| 8/8")  # the close's redraw, the same state: held back
    stream.write("\n")  # the bar finishes
    assert out.getvalue() == "reward:   0%|   | 0/8\nreward: 100%|###| 8/8\n"


def test_a_command_run_in_process_puts_back_what_it_changed():
    """Commands invoked in-process (tests) leave the host's logging, warnings, stderr and env as they were."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level, sys.stderr, list(warnings.filters), dict(os.environ),
              logging.getLogger("mlflow.system_metrics").level, logging.getLogger("DeepSpeed").filters[:])
    result = CliRunner().invoke(app, ["config", "cells", "-c", str(CONFIG)])
    assert result.exit_code == 0 and "grpo__llama-base__warm-start__think__tiny-rm__demo" in result.stdout
    after = (list(root.handlers), root.level, sys.stderr, list(warnings.filters), dict(os.environ),
             logging.getLogger("mlflow.system_metrics").level, logging.getLogger("DeepSpeed").filters[:])
    assert after == before


@pytest.mark.slow
def test_a_generation_jobs_log_has_no_library_noise_and_no_carriage_returns(tiny_zoo, tmp_path):
    """A job with a model load, a progress bar and MLflow's system-metrics sampler, as the rule runs it."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "messages": [{"role": "user", "content": f"Count to {i}."}]})
                               + "\n" for i in range(4)))
    args = ["eval", "generate", "--model", str(tiny_zoo["llama-instruct"]), "--prompts", str(prompts),
            "--out", "gen/generations.jsonl", "-c", str(CONFIG), "--max-new-tokens", "8"]
    code, lines = run_logged(args, tmp_path, tmp_path / "generate.log")
    assert code == 0, "\n".join(lines)
    text = (tmp_path / "generate.log").read_text()
    assert "\r" not in text and "\x1b[" not in text
    assert lines[0].split(" INFO rlmt: start rlmt eval generate ")[1].endswith(" ".join(args[2:]))
    assert lines[-1].endswith(f"outputs: generations=gen/generations.jsonl@{sha16(tmp_path / 'gen/generations.jsonl')}")
    # the bar of this job's prompts: its own lines, the last one complete
    bar = [line for line in lines if line.startswith("generate gen:")]
    assert bar and bar[-1].startswith("generate gen: 100%") and "4/4" in bar[-1]
    # MLflow's sampler ran (system metrics are on for generation) but its notices stay below info
    assert not any("system_metrics" in line or "DeprecationWarning" in line or "FutureWarning" in line
                   for line in lines)
