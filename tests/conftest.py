"""Shared test fixtures: offline hubs, the tiny model zoo (built once), real data, a local OpenAI server."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

# Nothing in a test may reach a hub; set before transformers/datasets are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# One trace cache for the whole session (rlmt preflight traces each distinct GPU job once; every test and every
# Snakemake run the tests start reuses it), outside the working tree.
if "RLMT_PREFLIGHT_CACHE" not in os.environ:
    import tempfile

    os.environ["RLMT_PREFLIGHT_CACHE"] = tempfile.mkdtemp(prefix="rlmt-preflight-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
sys.path.insert(0, str(Path(__file__).parent))

if "RLMT_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["RLMT_DATA_DIR"] = str(SHARED_DATA)
DATA_DIR = Path(os.environ["RLMT_DATA_DIR"]) if os.environ.get("RLMT_DATA_DIR") else None


def in_ci() -> bool:
    """CI sets ``CI=true`` (most CI systems do); there a test may not skip for want of data."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_component(reason: str, *, module_level: bool = False) -> NoReturn:
    """The one rule for a test whose component (a package, a CLI, data) is not here: outside CI it
    skips, naming what to install; under CI (``in_ci()``) it fails, so a green CI run tested it."""
    if in_ci():
        pytest.fail(f"CI must have this: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module_level)


def pytest_configure(config) -> None:
    # Under CI the data must be there: 19 tests would otherwise skip and the run go green untested.
    if in_ci() and (DATA_DIR is None or not DATA_DIR.is_dir()):
        raise pytest.UsageError(
            f"CI=true but there is no data directory: $RLMT_DATA_DIR is {os.environ.get('RLMT_DATA_DIR')!r} and "
            f"{SHARED_DATA} does not exist. Lay shared/ beside the checkout or point RLMT_DATA_DIR at the data.")


@pytest.fixture(scope="module")
def paper_judge_key():
    """OPENAI_API_KEY set to a placeholder for a module: config/paper.yaml's rubric cells block in the preflight
    while their judge's key variable is unset (as a user's shell would without `export OPENAI_API_KEY=...`);
    the preflight reads only that it is set, and sends nothing."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", "sk-preflight-test-placeholder")
        yield


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$RLMT_DATA_DIR, else ../shared/data (CI must have one: see pytest_configure). Outside CI the
    tests that need it skip when neither is set; a RLMT_DATA_DIR that names no directory fails them."""
    if DATA_DIR is None:
        missing_component(f"no data: {SHARED_DATA} is not present and $RLMT_DATA_DIR is not set")
    if not DATA_DIR.is_dir():
        pytest.fail(f"$RLMT_DATA_DIR={DATA_DIR} is not a directory")
    return DATA_DIR


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    """The tiny offline zoo, built once per test session: name -> model directory."""
    from rlmt.models.tiny import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture()
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store for one test."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


@pytest.fixture()
def openai_server():
    """Factory for local OpenAI-compatible servers; all are stopped after the test."""
    from openai_server import LocalOpenAIServer

    servers = []

    def make(*args, **kwargs) -> LocalOpenAIServer:
        srv = LocalOpenAIServer(*args, **kwargs).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: tiny matmuls gain nothing from a second one, and OpenMP
    barriers crawl on a busy shared CPU (modules opt in with ``pytest.mark.usefixtures``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class EnvironmentLeak(UserWarning):
    """A test left os.environ changed (restored before the next test runs)."""


# Set by pytest itself, or once by a library at its first import (polars' jemalloc settings): not a test's doing.
NOT_A_LEAK = frozenset({"PYTEST_CURRENT_TEST", "_RJEM_MALLOC_CONF"})


@pytest.fixture(autouse=True)
def environment_restored(request):
    """Each test starts from the environment the previous one started from: a library call that
    writes os.environ (``mlflow.set_tracking_uri`` sets MLFLOW_TRACKING_URI for child processes, for
    one) would otherwise reroute a later test's runs. A leak is undone and reported as a warning
    naming the test and the variables, so that it is fixed where it happens."""
    before = dict(os.environ)
    yield
    after = os.environ
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and k not in NOT_A_LEAK)
    if changed:
        kept = {k: after[k] for k in NOT_A_LEAK if k in after}
        os.environ.clear()
        os.environ.update(before)
        os.environ.update(kept)
        import warnings

        warnings.warn(EnvironmentLeak(f"{request.node.nodeid} left os.environ changed: {', '.join(changed)}"))
