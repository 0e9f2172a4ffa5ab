"""`rlmt preflight`: config/paper.yaml passes; each blocker class, seeded into a copy, is caught with its cell and key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlmt.preflight import BLOCKER, Shape, load_facts, model_shape, run

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "config" / "paper.yaml"
RAW = yaml.safe_load(PAPER.read_text())


@pytest.fixture(scope="module", autouse=True)
def _judge_key_is_set(paper_judge_key):
    """The paper grid's rubric cells need their judge's key variable (conftest.paper_judge_key)."""


def _seed(tmp_path: Path, change) -> Path:
    raw = copy.deepcopy(RAW)
    change(raw)
    path = tmp_path / "seeded.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _blockers(path: Path) -> set[tuple[str, str]]:
    return {(f.cell, f.key) for f in run(path, root=ROOT).blockers}


def _override(raw, match: dict) -> dict:
    return next(o for o in raw["overrides"] if o["match"] == match)


def test_paper_config_passes_with_exit_0_and_a_table():
    proc = subprocess.run([sys.executable, "-m", "rlmt.cli", "preflight", "-c", str(PAPER)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # first the budget of every GPU job (one row each: SFT per warm-start cell, and each cell's training job)
    assert lines[0].split() == ["cell", "job", "GPU", "memory", "peak", "at", "vLLM", "KV", "hours", "disk"]
    budget_rows = lines[1:lines.index("")]
    assert len(budget_rows) == 47 + 34  # 34 of the 47 cells start warm
    # then the findings
    findings = lines[lines.index("") + 1:]
    assert findings[0].split()[:4] == ["cell", "check", "status", "key"]
    assert findings[-1].startswith("47 cells: 0 blocker(s)")
    checked = {line.split()[1] for line in findings[1:-1]}
    assert {"template", "launcher", "schedule", "memory", "vllm-kv", "runtime", "host-memory", "disk"} <= checked


def test_a_blocker_exits_non_zero_naming_cell_and_key(tmp_path):
    path = _seed(tmp_path, lambda raw: raw["resources"]["train_ppo"].update(accelerate_config="config/accelerate/zero3.yaml"))
    proc = subprocess.run([sys.executable, "-m", "rlmt.cli", "preflight", "-c", str(path), "--done", str(tmp_path / "ok")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert ("BLOCKER cell=ppo__llama-base__warm-start__think__skywork-v1__wildchat-if "
            "key=resources.train_ppo.accelerate_config: ppo does not run under zero3") in proc.stderr
    assert not (tmp_path / "ok").exists()  # the workflow's marker is written only without blockers


def test_template_blockers(tmp_path):
    # the Qwen training template on the Llama cells: renders another family's text
    def wrong_family(raw):
        _override(raw, {"base": ["llama-base", "llama-instruct"]})["sft"]["chat_template_path"] = "package:qwen2_5_training"
    found = _blockers(_seed(tmp_path, wrong_family))
    assert ("grpo__llama-base__warm-start__think__skywork-v1__wildchat-if", "algorithms.sft.chat_template_path") in found
    assert not any(cell.startswith("grpo__qwen") for cell, _ in found)

    # no training template at all: today's Llama-3.1 SFT crash
    def none(raw):
        raw["overrides"].remove(_override(raw, {"base": ["llama-base", "llama-instruct"]}))
    found = _blockers(_seed(tmp_path, none))
    assert ("dpo__llama-instruct__warm-start__nothink__skywork-v1__wildchat-if", "algorithms.sft.chat_template_path") in found


def test_launcher_and_geometry_blockers(tmp_path):
    found = _blockers(_seed(tmp_path, lambda raw: raw["resources"].pop("train_ppo")))  # PPO under ZeRO-3
    assert ("ppo__qwen-base__zero__think__skywork-v1__wildchat-if", "resources.train.accelerate_config") in found
    found = _blockers(_seed(tmp_path, lambda raw: raw["resources"]["train"].update(
        accelerate_config="config/accelerate/missing.yaml")))
    assert ("grpo__qwen-base__zero__think__skywork-v1__wildchat-if", "resources.train.accelerate_config") in found
    found = _blockers(_seed(tmp_path, lambda raw: raw["algorithms"]["ppo"].update(mini_batch_size=60, prompts_per_step=60)))
    assert ("ppo__llama-base__zero__nothink__skywork-v1__wildchat-if", "algorithms.ppo.mini_batch_size") in found


def test_schedule_blocker_is_the_128_prompt_bug(tmp_path):
    # one update per rollout (today's mapping): 116 updates, so select_step 135 never exists
    found = _blockers(_seed(tmp_path, lambda raw: raw["algorithms"]["grpo"].pop("prompts_per_update")))
    key = "algorithms.grpo.checkpoints.select_step"
    assert found == {(f"grpo__{c}__warm-start__{t}__skywork-v1__wildchat-if", key)
                     for c, t in (("llama-instruct", "think"), ("qwen-base", "nothink"), ("qwen-instruct", "think"))}
    report = run(_seed(tmp_path, lambda raw: raw["algorithms"]["grpo"].pop("prompts_per_update")), root=ROOT)
    assert "the run saves steps [45, 90, 116]" in report.blockers[0].message


def test_remote_code_blocker(tmp_path):
    found = _blockers(_seed(tmp_path, lambda raw: raw["reward_models"]["armorm"].pop("trust_remote_code")))
    assert found == {(f"grpo__llama-base__warm-start__{t}__armorm__wildchat-if", "reward_models.armorm.trust_remote_code")
                     for t in ("think", "nothink")}


def test_memory_blocker(tmp_path):
    # 8 completions of 5,120 tokens per GPU without recomputation: the activations of 40,960 tokens through 32 layers
    # (~270 GiB traced) are the part to cut, so activation checkpointing is the key to change
    found = _blockers(_seed(tmp_path, lambda raw: raw["algorithms"]["grpo"].update(per_device_train_batch_size=8,
                                                                                    gradient_checkpointing=False)))
    assert ("grpo__llama-base__warm-start__think__skywork-v1__wildchat-if",
            "algorithms.grpo.gradient_checkpointing") in found
    # a 40 GB GPU: PPO's rollout (vLLM's 0.4 share beside the resident shards and the reward model) does not fit
    report = run(_seed(tmp_path, lambda raw: raw["resources"]["train_ppo"].update(gpu_mem_gb=40)), root=ROOT)
    ppo = [f for f in report.blockers if f.cell.startswith("ppo__") and f.check == "memory"]
    assert len(ppo) == 12
    assert all("of 37.3 GiB per GPU" in f.message and "vLLM" in f.message for f in ppo)


def test_resources_blockers(tmp_path):
    def incomplete(raw):
        raw["resources"]["sft"].pop("gpu_mem_gb")
        raw["resources"]["judge"].pop("slurm_partition")
    found = _blockers(_seed(tmp_path, incomplete))
    assert {("(all)", "resources.sft.gpu_mem_gb"), ("(all)", "resources.judge.slurm_partition")} <= found


def test_invalid_config_is_one_blocker_naming_the_key(tmp_path):
    report = run(_seed(tmp_path, lambda raw: raw["algorithms"]["grpo"].update(learning_rte=1e-6)), root=ROOT)
    assert len(report.blockers) == 1 and "algorithms.grpo.learning_rte: unknown key" in report.blockers[0].message


def test_model_facts_shapes_give_the_published_parameter_counts():
    facts = load_facts()
    for name, arch in facts["architectures"].items():
        shape = Shape(**{k: v for k, v in arch.items() if k != "params"})
        assert shape.params == arch["params"], name
    llama = model_shape("meta-llama/Llama-3.1-8B-Instruct", facts)
    rm = model_shape("Skywork/Skywork-Reward-Llama-3.1-8B-v0.2", facts)
    assert rm.params == llama.params - llama.vocab * llama.hidden + llama.hidden  # score head instead of the LM head
    for spec in RAW["models"].values():
        assert spec["source"] in facts["models"]
    for spec in RAW["reward_models"].values():  # the classifiers (a rubric judge or a mix has no weights of its own)
        if spec.get("kind", "classifier") == "classifier":
            assert spec["source"] in facts["models"]


def test_default_config_passes():
    report = run(ROOT / "config" / "config.yaml", root=ROOT)
    assert report.blockers == [] and len(report.cells) == 13  # the default grid: 12 cells, and one on the length-debiased reward


@pytest.mark.parametrize("case", ["tokenizer_config", "no_template_path"])
def test_template_of_a_local_model_dir_is_read_from_its_tokenizer_config(tmp_path, case):
    import json

    real = (ROOT / "tests/fixtures/templates/meta-llama--Llama-3.1-8B-Instruct.jinja").read_text()
    model = tmp_path / "llama-instruct"
    model.mkdir()
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": real}))

    def local(raw):
        raw["models"]["llama-instruct"]["source"] = str(model)
        if case == "no_template_path":
            raw["overrides"].remove(_override(raw, {"base": ["llama-base", "llama-instruct"]}))
    found = _blockers(_seed(tmp_path, local))
    cell = ("grpo__llama-instruct__warm-start__think__skywork-v1__wildchat-if", "algorithms.sft.chat_template_path")
    assert (cell in found) == (case == "no_template_path")


def test_no_trace_says_what_it_did_not_check(tmp_path):
    # without traces nothing is measured: every GPU job says so (a warning), nothing blocks for want of a trace,
    # and the checks that need no trace (vLLM's KV budget, disk, host memory) still run
    proc = subprocess.run([sys.executable, "-m", "rlmt.cli", "preflight", "-c", str(PAPER), "--no-trace",
                           "--cache-dir", str(tmp_path / "empty")], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    not_traced = [line for line in proc.stdout.splitlines() if "memory not traced (--no-trace)" in line]
    assert len(not_traced) == 47 + 34 and all(" warning " in line for line in not_traced)
    assert not (tmp_path / "empty").exists()  # nothing traced, nothing cached
    assert " vllm-kv " in proc.stdout and " host-memory " in proc.stdout
