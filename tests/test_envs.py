"""The conda environments (envs/*.yaml): self-contained pinned dependency lists, split by need.

- every pin repeats pyproject.toml's; no line refers to a path (Snakemake may build an env from a
  copy of the file anywhere, so ``-e ../`` would name a different directory);
- each env holds what its rules import and run: checked against the packages installed here, by
  running the rules' commands on a Python that sees only the env's distributions (and what they
  depend on); the data env is also built for real, from the file alone, in a fresh venv.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted(p.stem for p in (ROOT / "envs").glob("*.yaml"))
# Installed only on GPU clusters (it needs CUDA): its pin is checked, its import is not.
GPU_ONLY = {"vllm"}
# vLLM 0.30.0 (the newest built for torch 2.13.0) needs numpy < 2.4 (mistral-common); the envs holding it pin
# numpy 2.3.5 (resolved with pip together with every other pin of the env). The submitting venv keeps 2.4.6:
# snakemake-executor-plugin-slurm 2.8 needs >= 2.4.5, and no env holds Snakemake.
WITH_VLLM = {"numpy": "2.3.5"}


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for req in requirements:
        r = Requirement(req)
        (spec,) = r.specifier
        out[canonicalize_name(r.name)] = spec.version
    return out


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PINNED = _pins(PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["vllm"])


def env_pip(env: str) -> list[str]:
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    return next(d["pip"] for d in spec["dependencies"] if isinstance(d, dict) and "pip" in d)


@pytest.mark.parametrize("env", ENVS)
def test_env_is_pinned_dependencies_only_agreeing_with_pyproject(env):
    spec = yaml.safe_load((ROOT / "envs" / f"{env}.yaml").read_text())
    assert "python=3.11" in spec["dependencies"]
    for line in env_pip(env):
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", line), f"{env}: {line!r} is not a plain pin"
    pins = _pins(env_pip(env))
    for name, version in pins.items():
        want = WITH_VLLM[name] if "vllm" in pins and name in WITH_VLLM else PINNED.get(name)
        assert want == version, f"{env}: {name}=={version} but pyproject pins {PINNED.get(name)}"


def test_envs_are_split_by_need():
    names = {env: set(_pins(env_pip(env))) for env in ENVS}
    heavy = {"torch", "deepspeed", "trl", "accelerate", "vllm"}
    assert not names["data"] & heavy and not names["report"] & heavy
    assert {"torch", "trl", "deepspeed", "accelerate"} <= names["train"]
    assert {"torch", "vllm", "lm-eval", "math-verify"} <= names["eval"] and "deepspeed" not in names["eval"]
    assert not any("snakemake" in n for ns in names.values() for n in ns)  # the jobs' snakemake is the submitter's


def test_every_rule_names_an_existing_environment():
    envs = set()
    for smk in (ROOT / "workflow/rules").glob("*.smk"):
        for m in re.finditer(r'^    conda:\n        "([^"]+)"', smk.read_text(), re.M):
            assert (smk.parent / m.group(1)).resolve().is_file(), m.group(1)
            envs.add(Path(m.group(1)).stem)
    assert envs == set(ENVS)


# ----------------------------------------------------------------------------- what each env can run


def _closure(requirements: list[str]) -> tuple[set[str], set[str]]:
    """Installed distributions the requirements pull in, and the requirements not installed here."""
    env = default_environment()
    seen: set[str] = set()
    missing: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.add(name)
            continue
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for sub in dist.requires or []:
            sub_req = Requirement(sub)
            if sub_req.marker is None or sub_req.marker.evaluate({**env, "extra": ""}):
                todo.append((sub_req, ""))
            else:
                for ex in req.extras:
                    if sub_req.marker.evaluate({**env, "extra": ex}):
                        todo.append((sub_req, ex))
    return {k.split("[")[0] for k in seen}, missing


def env_view(env: str, where: Path) -> Path:
    """A site-packages holding only links to the env's installed distributions (and their dependencies)."""
    dists, missing = _closure(env_pip(env))
    assert missing <= GPU_ONLY, f"{env}: not installed here: {sorted(missing - GPU_ONLY)}"
    site = where / f"{env}-site"
    site.mkdir()
    for name in dists:
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and (base / top).exists():
                (site / top).symlink_to(base / top)
    return site


def run_in_view(site: Path, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -S` (no site-packages) with the view and this source tree: what a rule in the env sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=f"{site}:{ROOT}", OMP_NUM_THREADS="1", MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlruns.db'}")
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


IMPORTS = {
    "data": ["rlmt.data.curate", "rlmt.data.sft_data", "rlmt.data.teacher", "rlmt.tracking", "openai"],
    "train": ["rlmt.train.sft", "rlmt.train.grpo", "rlmt.train.dpo", "rlmt.train.ppo", "rlmt.models.prepare",
              "rlmt.models.zero", "rlmt.rewards", "deepspeed", "trl", "accelerate"],
    "eval": ["rlmt.generation", "rlmt.rewards", "rlmt.judges", "pkgutil-all:rlmt.benchmarks", "rlmt.generation.hf_backend"],
    "report": ["rlmt.report", "pkgutil-all:rlmt.report"],
}


def _import_script(modules: list[str]) -> str:
    lines = ["import importlib, pkgutil, sys"]
    for mod in modules:
        if mod.startswith("pkgutil-all:"):
            pkg = mod.split(":", 1)[1]
            lines.append(f"p = importlib.import_module({pkg!r})")
            lines.append("for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.'): importlib.import_module(m.name)")
        else:
            lines.append(f"importlib.import_module({mod!r})")
    lines.append("print('imported', len(sys.modules))")
    return "\n".join(lines)


@pytest.mark.parametrize("env", ENVS)
def test_env_view_imports_its_rules_modules_and_hides_the_rest(env, tmp_path):
    site = env_view(env, tmp_path)
    modules = [m for m in IMPORTS[env] if not m.endswith("hf_backend") or (ROOT / "rlmt/generation/hf_backend.py").exists()]
    done = run_in_view(site, ["-c", _import_script(modules)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    if env in ("data", "report"):  # the view really hides what the env lacks
        hidden = run_in_view(site, ["-c", "import torch"], tmp_path)
        assert hidden.returncode != 0 and "No module named 'torch'" in hidden.stderr


@pytest.mark.slow
def test_data_env_view_runs_the_data_rules_commands(tiny_zoo, tmp_path):
    """`rlmt data curate` (with a tokenizer) and `rlmt data sft` on the embedded default, without torch."""
    site = env_view("data", tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config/config.yaml").read_text())
    curate = run_in_view(site, ["-m", "rlmt.cli", "data", "curate", "--config", str(cfg), "--mixture", "demo",
                                "--tokenizer", str(tiny_zoo["llama-base"]), "--out", str(tmp_path / "mix")], tmp_path)
    assert curate.returncode == 0, curate.stderr[-3000:]
    assert (tmp_path / "mix/train.parquet").is_file() and (tmp_path / "mix/stats.json").is_file()
    sft = run_in_view(site, ["-m", "rlmt.cli", "data", "sft", "--config", str(cfg), "--name", "demo-sft",
                             "--out-think", str(tmp_path / "think.jsonl"), "--out-nothink", str(tmp_path / "nothink.jsonl")],
                      tmp_path)
    assert sft.returncode == 0, sft.stderr[-3000:]
    assert (tmp_path / "think.jsonl").read_text().count("\n") > 10
    assert "torch" not in run_in_view(site, ["-c", "import sys, rlmt.cli; print(sorted(sys.modules))"], tmp_path).stdout


@pytest.mark.slow
@pytest.mark.env_build  # 23 min of pip on this loaded 2-core machine: a CI step of its own
@pytest.mark.timeout(2400)
def test_data_env_installs_from_the_file_alone_in_a_fresh_venv(tiny_zoo, tmp_path):
    """The pip part of envs/data.yaml, copied elsewhere, installs into a new venv; the curate command runs there."""
    copy = tmp_path / "elsewhere" / "data.yaml"
    copy.parent.mkdir()
    copy.write_text((ROOT / "envs/data.yaml").read_text())
    reqs = tmp_path / "elsewhere" / "requirements.txt"
    reqs.write_text("\n".join(yaml.safe_load(copy.read_text())["dependencies"][-1]["pip"]) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "-r", str(reqs)],
                         cwd=copy.parent, capture_output=True, text=True, timeout=2100)
    assert pip.returncode == 0, pip.stdout[-2000:] + pip.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlruns.db'}")
    cfg = tmp_path / "config.yaml"
    cfg.write_text((ROOT / "config/config.yaml").read_text())
    done = subprocess.run([str(venv / "bin/python"), "-m", "rlmt.cli", "data", "curate", "--config", str(cfg),
                           "--mixture", "demo", "--tokenizer", str(tiny_zoo["llama-base"]), "--out", str(tmp_path / "mix")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "mix/val.parquet").is_file()
    freeze = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, timeout=120).stdout.lower()
    assert "torch==" not in freeze and "deepspeed==" not in freeze and "mlflow==3.17.2" in freeze
