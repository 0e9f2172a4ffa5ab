"""The report of a config whose models are all `tiny:` (random weights) opens with a plumbing-demo banner.

Decided from the config's model sources, not from its file name: the embedded default gets it, the
small real-model config and the paper's grid do not, and the embedded default with one real model
(a local path) does not either.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from rlmt.cli import app
from rlmt.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def _with_real_policy(tmp_path: Path) -> Path:
    """config/config.yaml with one policy model read from a local directory instead of the tiny zoo."""
    doc = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    doc["models"]["qwen-instruct"]["source"] = str(tmp_path / "Qwen2.5-0.5B-Instruct")
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_banner_is_decided_by_the_model_sources(tmp_path):
    from rlmt.report.banner import is_plumbing_demo, model_sources

    default = load_config(ROOT / "config" / "config.yaml")
    # config.yaml: four tiny policies and the tiny reward model (read by hand from the file)
    assert model_sources(default) == {
        "models.llama-base": "tiny:llama-base", "models.llama-instruct": "tiny:llama-instruct",
        "models.qwen-base": "tiny:qwen-base", "models.qwen-instruct": "tiny:qwen-instruct",
        "reward_models.tiny-rm": "tiny:reward"}
    assert is_plumbing_demo(default)
    assert not is_plumbing_demo(load_config(ROOT / "config" / "paper.yaml"))
    assert not is_plumbing_demo(load_config(_with_real_policy(tmp_path)))
    small = load_config(ROOT / "config" / "small.yaml")
    # small.yaml's reward model is trained by the pipeline: its weights come from its backbone's GGUF
    assert model_sources(small)["reward_models.smol-rm"] == small.models["smollm2-instruct"].source
    assert not is_plumbing_demo(small)


def _report(tmp_path: Path, config: Path, monkeypatch) -> tuple[str, str]:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    out = tmp_path / "report"
    (tmp_path / "eval").mkdir(exist_ok=True)
    result = CliRunner().invoke(app, ["report", "build", "-c", str(config), "--out", str(out),
                                      "--eval-root", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    return (out / "report.md").read_text(), (out / "report.html").read_text()


def test_the_default_configs_report_opens_with_the_banner(tmp_path, monkeypatch):
    md, page = _report(tmp_path, ROOT / "config" / "config.yaml", monkeypatch)
    lines = md.splitlines()
    assert lines[0] == "# RLMT report"
    assert lines[2].startswith("> **Plumbing demo: the numbers below are noise.**")
    assert "config/small.yaml" in lines[2] and "docs/small-experiment.md" in lines[2]
    assert (ROOT / "docs" / "small-experiment.md").is_file()  # where the banner points
    # the HTML report: the banner right under its title, before the main table
    assert page.index("<strong>Plumbing demo: the numbers below are noise.</strong>") < page.index("<h2>Main table</h2>")


def test_a_config_with_a_real_model_has_no_banner(tmp_path, monkeypatch):
    md, page = _report(tmp_path, _with_real_policy(tmp_path), monkeypatch)
    assert "Plumbing demo" not in md and "Plumbing demo" not in page
    assert md.splitlines()[2].startswith("13 cells;")
