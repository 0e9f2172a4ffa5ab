"""The conda environments repeat pyproject.toml's pins exactly."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        if "==" in req:
            name, version = req.split("==", 1)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


PYPROJECT = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])


@pytest.mark.parametrize("env", sorted(p.name for p in (ROOT / "envs").glob("*.yaml")))
def test_env_pins_agree_with_pyproject(env):
    spec = yaml.safe_load((ROOT / "envs" / env).read_text())
    pip = next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = _pins(pip)
    assert pins, f"{env} pins nothing"
    for name, version in pins.items():
        assert PYPROJECT.get(name) == version, f"{env}: {name}=={version} but pyproject pins {PYPROJECT.get(name)}"
    assert "python=3.11" in spec["dependencies"]


def test_every_rule_family_has_an_environment():
    rules = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    for env in sorted({line.split('"')[1] for line in rules.splitlines() if line.strip().startswith('"../../envs/')}):
        assert (ROOT / "workflow/rules" / env).resolve().exists(), env
