"""Shared test fixtures: offline hubs, the tiny model zoo (built once), real data, a local OpenAI server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Nothing in a test may reach a hub; set before transformers/datasets are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()
sys.path.insert(0, str(Path(__file__).parent))

if SHARED_DATA.is_dir():
    os.environ.setdefault("RLMT_DATA_DIR", str(SHARED_DATA))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (CI always has it); tests that need it skip only when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


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
