"""Every trainer as a real 2-process job: ``rlmt launch`` -> ``accelerate launch`` (gloo, CPU) -> ``rlmt train``.

The launches use the project's own accelerate configs: ``config/accelerate/ddp.yaml`` for SFT,
GRPO, DPO and PPO, and ``config/accelerate/fsdp2.yaml`` (the sharded path, actor and critic
sharded by FSDP2) for PPO. DeepSpeed ZeRO-3 (``zero3.yaml``, the GPU path of SFT/GRPO/DPO)
cannot run here: accelerate grants DeepSpeed to non-CPU processes only, and DeepSpeed's CPU
accelerator JIT-compiles a shared-memory comm op at its first init (a 2-process probe had not
reached its first barrier after 8 minutes on this 2-core machine).

Each launch proves, from what the job wrote (``RLMT_RANK_REPORT_DIR``: each rank's devices and
its final parameters, gathered when sharded):

- one MLflow run for the job (not one per process), FINISHED;
- outputs written once (one final/, no staging dirs; DPO: the samples file holds exactly
  samples_per_prompt samples per prompt, and the pairs were built once);
- the final weights the same on every rank, and equal to the written model;
- every model of a rank on that rank's device.

PPO's sharded run must match the unsharded one: same seeds, same prompts per rank, so the first
two steps' policy and critic losses agree within 1e-4 relative (fp32; only the order of the
gradient reductions differs).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ports import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CELL = "{algo}__llama-base__warm-start__nothink__tiny-rm__demo"
SAMPLES_PER_PROMPT = 3
N_PROMPTS = 8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The inputs every launch shares: the tiny zoo, SFT data, 8 prompts and a config of tiny settings."""
    import polars as pl
    import yaml

    from rlmt.models.tiny import build_zoo
    from rlmt.thinking import WARM_NOTHINK, sft_messages

    work = tmp_path_factory.mktemp("multiprocess")
    zoo = build_zoo(work / "zoo", ["llama-instruct", "reward"])
    words = "plan write answer the user list short clear help code story kind".split()
    (work / "sft.jsonl").write_text("".join(
        json.dumps({"id": str(i), "messages": sft_messages([{"role": "user", "content": f"Tell me about {w}"}], "",
                                                          f"{w} is {words[(i + 3) % len(words)]}", WARM_NOTHINK)}) + "\n"
        for i, w in enumerate(words[:8])))
    demo = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()]
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 20}
                  for r in demo[:N_PROMPTS]]).write_parquet(work / "train.parquet")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    rollout = {"max_prompt_length": 256, "max_completion_length": 6}
    cfg["algorithms"] = {
        "sft": {"learning_rate": 1e-3, "num_train_epochs": 1, "global_batch_size": 4, "per_device_train_batch_size": 2,
                "max_length": 128, "save_steps": 100},
        "grpo": {"learning_rate": 1e-4, "prompts_per_step": 2, "num_generations": 2, "per_device_train_batch_size": 2,
                 "max_steps": 2, "rollout": rollout, "checkpoints": {"save_steps": 2}, "log_samples_every": 100},
        "dpo": {"samples_per_prompt": SAMPLES_PER_PROMPT, "min_parsable": 2, "learning_rate": 1e-4, "max_steps": 2,
                "global_batch_size": 2, "per_device_train_batch_size": 1, "max_length": 128, "val_fraction": 0.0,
                "rollout": rollout, "checkpoints": {"save_steps": 2}},
        "ppo": {"learning_rate": 1e-4, "critic_lr": 1e-3, "prompts_per_step": 4, "mini_batch_size": 4,
                "micro_batch_size": 2, "max_steps": 2, "entropy_coef": 0.001, "val_prompts": 2, "rollout": rollout,
                "checkpoints": {"save_steps": 2}, "log_samples_every": 100},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return {"work": work, "zoo": zoo, "config": work / "config.yaml"}


def launch(job, name: str, accelerate_config: str, train_args: list[str]) -> dict:
    """One 2-process job through ``rlmt launch`` (rendezvous on a free port); returns its outputs and the two
    rank reports."""
    work = job["work"]
    reports = work / "reports" / name
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "ACCELERATE_USE_CPU": "true",
           "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{work / f'{name}.db'}",
           "RLMT_RANK_REPORT_DIR": str(reports), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "info"}  # the Trainer prints its batch geometry at info
    cmd = [str(BIN / "rlmt"), "launch", "--gpus-per-node", "2", "--accelerate-config",
           str(ROOT / "config/accelerate" / accelerate_config), "--port", str(free_port()), "--",
           str(BIN / "rlmt"), "train", *train_args, "--config", str(job["config"])]
    done = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    (work / f"{name}.log").write_text(log)
    assert done.returncode == 0, log[-4000:]
    ranks = [json.loads((reports / f"{name.split('-')[0]}-rank{r}.json").read_text()) for r in (0, 1)]
    return {"log": log, "ranks": ranks, "reports": reports, "db": f"sqlite:///{work / f'{name}.db'}"}


def job_runs(uri: str, stage: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = client.search_experiments()
    return [r for r in client.search_runs([e.experiment_id for e in experiments])
            if r.data.tags.get("rlmt.stage") == stage]


def rank_params(reports: Path, stage: str, rank: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(reports / f"{stage}-rank{rank}.safetensors"))


def check_job(result: dict, stage: str, written_model: Path, *, prefix: str = "") -> None:
    """The properties every launch must show (see the module docstring)."""
    import torch
    from safetensors.torch import load_file

    ranks = result["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks), ranks
    # each rank's models on that rank's own device
    for r in ranks:
        placed = {**{k: v["device"] for k, v in r["loaded"].items()}, **r["devices"]}
        placed = {k: v for k, v in placed.items() if v != "none"}
        assert placed and all(v == r["expected_device"] for v in placed.values()), r
    # one MLflow run for the job, finished
    runs = job_runs(result["db"], stage)
    assert len(runs) == 1, [(r.info.run_name, r.data.tags.get("rlmt.pid")) for r in runs]
    assert runs[0].info.status == "FINISHED"
    if stage != "sft":  # an RL job ends by selecting its checkpoint: the step, and final/ as the run's logged model
        from mlflow.tracking import MlflowClient

        client = MlflowClient(result["db"])
        outputs = client.get_run(runs[0].info.run_id).outputs.model_outputs
        assert len(outputs) == 1 and runs[0].data.params.get("run.selected_step") == str(outputs[0].step), runs[0].data.params
        model = client.get_logged_model(outputs[0].model_id)
        assert model.tags["rlmt.checkpoint.path"] == str(written_model.resolve())
    # the same final weights on both ranks, equal to what was written
    p0, p1 = (rank_params(result["reports"], stage, k) for k in (0, 1))
    assert p0.keys() == p1.keys() and len(p0) > 10
    for name in p0:
        assert torch.allclose(p0[name], p1[name], rtol=0, atol=1e-6), name
    written = load_file(str(written_model / "model.safetensors"))
    shared = [k for k in written if prefix + k in p0]
    assert len(shared) >= len(written) - 1, (sorted(written)[:5], sorted(p0)[:5])  # a tied head may be stored once
    for k in shared:
        assert torch.allclose(written[k].float(), p0[prefix + k], rtol=0, atol=1e-6), k


def test_sft_ddp(job):
    out = job["work"] / "sft-model"
    result = launch(job, "sft-ddp", "ddp.yaml",
                    ["sft", "--model", str(job["zoo"]["llama-instruct"]), "--data", str(job["work"] / "sft.jsonl"),
                     "--out", str(out)])
    check_job(result, "sft", out)
    assert not Path(str(out) + ".work").exists() and not Path(str(out) + ".tmp").exists()
    # 8 examples, global batch 4 = 2 per device x 2 processes: one accumulation step, 2 optimizer steps (the
    # Trainer's own account of its geometry; one process would need 2 accumulation steps for the same batch)
    geometry = {k: int(v.replace(",", "")) for k, v in re.findall(
        r"(Num examples|Instantaneous batch size per device|Gradient Accumulation steps|Total optimization steps"
        r"|Total train batch size \(w\. parallel, distributed & accumulation\)) = ([\d,]+)", result["log"])}
    assert geometry == {"Num examples": 8, "Instantaneous batch size per device": 2, "Gradient Accumulation steps": 1,
                        "Total optimization steps": 2,
                        "Total train batch size (w. parallel, distributed & accumulation)": 4}, geometry


def test_grpo_ddp(job):
    out = job["work"] / "grpo"
    result = launch(job, "grpo-ddp", "ddp.yaml",
                    ["grpo", "--cell", CELL.format(algo="grpo"), "--policy", str(job["zoo"]["llama-instruct"]),
                     "--reward-model", str(job["zoo"]["reward"]), "--train", str(job["work"] / "train.parquet"),
                     "--out", str(out)])
    check_job(result, "grpo", out / "final")
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["diagnostics", "final", "step-2"]  # no staging left
    # the diagnostics gather every process's completions: 2 prompts x 2 generations a step, 2 on each process
    from rlmt.diagnostics import read_rollouts

    assert [(s.step, len(s)) for s in read_rollouts(out)] == [(1, 4), (2, 4)]
    # the reward model was loaded by each rank, on its own device
    assert all(r["loaded"]["reward"]["device"] == r["expected_device"] for r in result["ranks"])
    # The batch geometry of 2 processes: a step's 4 completions (2 prompts x 2 generations) are 2 per
    # device x 2 processes x 1 accumulation step; one process would need 2 accumulation steps.
    geometry = {k: int(v.replace(",", "")) for k, v in re.findall(
        r"(Instantaneous batch size per device|Total train batch size \(w\. parallel, distributed & accumulation\)"
        r"|Gradient Accumulation steps) = ([\d,]+)", result["log"])}
    assert geometry == {"Instantaneous batch size per device": 2, "Gradient Accumulation steps": 1,
                        "Total train batch size (w. parallel, distributed & accumulation)": 4}, geometry


def test_dpo_ddp_builds_its_pairs_once(job):
    import polars as pl

    out = job["work"] / "dpo"
    result = launch(job, "dpo-ddp", "ddp.yaml",
                    ["dpo", "--cell", CELL.format(algo="dpo"), "--policy", str(job["zoo"]["llama-instruct"]),
                     "--reward-model", str(job["zoo"]["reward"]), "--train", str(job["work"] / "train.parquet"),
                     "--out", str(out)])
    check_job(result, "dpo", out / "final")
    samples = [json.loads(line) for line in (out / "dpo_samples.jsonl").read_text().splitlines() if line.strip()]
    per_prompt = {}
    for s in samples:
        per_prompt[s["id"]] = per_prompt.get(s["id"], 0) + 1
    # every prompt sampled exactly samples_per_prompt times: one process sampled (two would give 6 each)
    assert len(per_prompt) == N_PROMPTS and set(per_prompt.values()) == {SAMPLES_PER_PROMPT}, per_prompt
    stats = json.loads((out / "pairs/stats.json").read_text())
    pairs = pl.read_parquet(out / "pairs/train.parquet")
    assert stats["counts"]["prompts"] == N_PROMPTS and stats["counts"]["train"] == pairs.height > 0
    assert pairs["id"].n_unique() == pairs.height  # one pair per prompt, not one per rank
    assert not (out / "pairs.tmp").exists()


@pytest.fixture(scope="module")
def ppo_runs(job):
    """PPO unsharded (DDP) and sharded (FSDP2), same seeds and settings."""
    runs = {}
    for name, config in (("ppo-ddp", "ddp.yaml"), ("ppo-fsdp2", "fsdp2.yaml")):
        out = job["work"] / name
        runs[name] = launch(job, name, config,
                            ["ppo", "--cell", CELL.format(algo="ppo"), "--policy", str(job["zoo"]["llama-instruct"]),
                             "--reward-model", str(job["zoo"]["reward"]), "--train", str(job["work"] / "train.parquet"),
                             "--val", str(job["work"] / "train.parquet"), "--out", str(out)])
        runs[name]["out"] = out
    return runs


@pytest.mark.timeout(1500)  # the first one also runs both PPO launches (the module fixture)
@pytest.mark.parametrize("name", ["ppo-ddp", "ppo-fsdp2"])
def test_ppo_two_processes(ppo_runs, name):
    result = ppo_runs[name]
    check_job(result, "ppo", result["out"] / "final", prefix="policy.")
    assert sorted(p.name for p in result["out"].iterdir() if p.is_dir()) == ["diagnostics", "final", "step-2"]
    from rlmt.diagnostics import read_rollouts

    assert [(s.step, len(s)) for s in read_rollouts(result["out"])] == [(1, 4), (2, 4)]  # 4 prompts a step, gathered
    sharded = name == "ppo-fsdp2"
    assert ("actor and critic sharded by FSDP2" in result["log"]) == sharded
    assert all(r["distributed_type"] == "MULTI_CPU" for r in result["ranks"])


def test_ppo_sharded_loss_matches_unsharded(ppo_runs):
    def history(name):
        state = json.loads((ppo_runs[name]["out"] / "step-2/trainer_state.json").read_text())
        return {h["step"]: h for h in state["log_history"]}

    ddp, fsdp = history("ppo-ddp"), history("ppo-fsdp2")
    assert sorted(ddp) == sorted(fsdp) == [1, 2]
    for step in (1, 2):
        for key in ("policy/loss", "critic/loss", "diag/reward_mean", "policy/grad_norm", "critic/grad_norm"):
            assert fsdp[step][key] == pytest.approx(ddp[step][key], rel=1e-4, abs=1e-6), (step, key)
