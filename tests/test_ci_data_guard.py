"""Under CI=true a missing data directory fails the pytest run; elsewhere the data tests skip.

Each case runs a real pytest in a subprocess on a copy of this suite's conftest.py laid in a fresh
tree (``<tmp>/repo/tests``), so ``../shared/data`` is whatever the case lays beside it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

DATA_TEST = '''
from pathlib import Path


def test_uses_the_data(data_dir):
    assert (Path(data_dir) / "marker.txt").read_text() == "data"
'''


def _run_pytest(tmp_path: Path, *, ci: bool, shared_data: bool, rlmt_data_dir: Path | None):
    repo = tmp_path / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "pytest.ini").write_text("[pytest]\n")
    shutil.copy(HERE / "conftest.py", repo / "tests" / "conftest.py")
    (repo / "tests" / "test_needs_data.py").write_text(DATA_TEST)
    if shared_data:
        (tmp_path / "shared" / "data").mkdir(parents=True)
        (tmp_path / "shared" / "data" / "marker.txt").write_text("data")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "RLMT_DATA_DIR", "PYTEST_ADDOPTS")}
    if ci:
        env["CI"] = "true"
    if rlmt_data_dir is not None:
        env["RLMT_DATA_DIR"] = str(rlmt_data_dir)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stdout + done.stderr


def test_ci_without_data_fails_the_run(tmp_path):
    rc, out = _run_pytest(tmp_path, ci=True, shared_data=False, rlmt_data_dir=None)
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "CI=true but there is no data directory" in out
    assert str(tmp_path / "shared" / "data") in out
    assert "passed" not in out and "skipped" not in out


def test_ci_with_a_missing_rlmt_data_dir_fails_the_run(tmp_path):
    rc, out = _run_pytest(tmp_path, ci=True, shared_data=False, rlmt_data_dir=tmp_path / "nowhere")
    assert rc == pytest.ExitCode.USAGE_ERROR, out
    assert "nowhere" in out


def test_outside_ci_without_data_the_data_tests_skip(tmp_path):
    rc, out = _run_pytest(tmp_path, ci=False, shared_data=False, rlmt_data_dir=None)
    assert rc == pytest.ExitCode.OK, out
    assert "1 skipped" in out and "no data:" in out


def test_rlmt_data_dir_that_names_no_directory_fails_outside_ci(tmp_path):
    rc, out = _run_pytest(tmp_path, ci=False, shared_data=False, rlmt_data_dir=tmp_path / "nowhere")
    assert rc == pytest.ExitCode.TESTS_FAILED, out
    assert "is not a directory" in out


def test_ci_finds_shared_data_beside_the_checkout(tmp_path):
    rc, out = _run_pytest(tmp_path, ci=True, shared_data=True, rlmt_data_dir=None)
    assert rc == pytest.ExitCode.OK and "1 passed" in out, out


def test_ci_uses_rlmt_data_dir(tmp_path):
    data = tmp_path / "elsewhere"
    data.mkdir()
    (data / "marker.txt").write_text("data")
    rc, out = _run_pytest(tmp_path, ci=True, shared_data=False, rlmt_data_dir=data)
    assert rc == pytest.ExitCode.OK and "1 passed" in out, out


# --------------------------------------------------------------------------- the suite's own pytest options


def _collect(*args: str) -> str:
    """Collect this module with the project's pytest options (pyproject.toml) and return pytest's header."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    done = subprocess.run([sys.executable, "-m", "pytest", "--co", "-p", "no:cacheprovider", *args, __file__],
                          cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_suite_runs_under_a_global_timeout_in_file_order_unless_asked():
    header = _collect()
    assert "timeout: 900.0s" in header and "timeout method: signal" in header  # pytest-timeout is installed and on
    assert "randomly-seed" not in header  # pytest-randomly is off by default
    shuffled = _collect("-p", "randomly", "--randomly-seed=7")
    assert "Using --randomly-seed=7" in shuffled
