"""Scale-out pieces on this CPU machine: the GPU check's tiny path, device choice per rank, one run per job,
the ZeRO-3 loading order. The real 2-process jobs of every trainer are tests/test_multiprocess_trainers.py
(GRPO's there also checks the 2-process batch geometry); bench/distributed_cpu.sh runs them under torchrun."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_gpu_check(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--workdir", str(tmp_path / "work"), "--out",
                           str(out), *args], capture_output=True, text=True, timeout=900, env=env)
    report = json.loads(out.read_text()) if out.is_file() else {}
    return done, report


@pytest.mark.slow
def test_gpu_check_runs_its_tiny_path_on_cpu(tmp_path):
    """Without CUDA the acceptance script runs the tiny shape of all three parts through the real trainers, with
    HF generate, and reports rates, MFU and the traced estimates; vLLM is reported as skipped."""
    done, report = run_gpu_check(tmp_path, "--steps", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no GPU: tiny CPU run" in done.stdout and "measured matmul" in done.stdout
    for algo in ("grpo", "ppo", "dpo"):
        m = re.search(rf"{algo} summary: params ([\d.]+)M  rollout ([\d,]+) tok/s  update ([\d,]+) tok/s  "
                      rf"MFU ([\d.]+)% of measured matmul", done.stdout)
        assert m, done.stdout
        assert float(m.group(1)) > 0 and int(m.group(2).replace(",", "")) > 0 and int(m.group(3).replace(",", "")) > 0
        assert 0 < float(m.group(4)) < 100
    # PPO also trains the critic: more parameters than GRPO's policy alone
    params = dict(re.findall(r"(\w+) summary: params ([\d.]+)M", done.stdout))
    assert float(params["ppo"]) > float(params["grpo"])
    assert re.search(r"skipped: vLLM rollouts .*no CUDA device", done.stdout)

    parts = report["parts"]
    assert {p: parts[p]["status"] for p in parts} == {"grpo": "ran", "ppo": "ran", "dpo": "ran"}
    steps = {p: [r for r in parts[p]["records"] if r["kind"] == "step"] for p in parts}
    assert [len(s) for s in steps.values()] == [2, 2, 2]
    # bench/gpu_check.py TINY_SHAPE, by hand: every completion runs to the 8-token cap (the policy's EOS is
    # suppressed) and every prompt is longer than the limits, so each step has the configured widths.
    # GRPO: 2 prompts x 4 completions = 8 rows, prompts cut to 32 tokens: 8 x 8 = 64 tokens generated,
    # 8 x (32 + 8) = 320 update tokens
    for r in steps["grpo"]:
        assert (r["rows"], r["prompt_width"], r["completion_width"], r["generated"], r["update_tokens"]) == \
            (8, 32, 8, 64, 320)
    # PPO: 4 prompts, cut to 28 tokens: 4 x 8 = 32 generated, 4 x (28 + 8) = 144 update tokens (1 PPO epoch)
    for r in steps["ppo"]:
        assert (r["rows"], r["prompt_width"], r["completion_width"], r["generated"], r["update_tokens"]) == \
            (4, 28, 8, 32, 144)
    # DPO: 2 prompts x 4 samples x 8 tokens = 64 generated; then one pair per step, chosen + rejected cut at
    # max_length 48: 2 rows x 48 = 96 tokens
    sampling = [r for r in parts["dpo"]["records"] if r["kind"] == "sampling"]
    assert len(sampling) == 1 and sampling[0]["generated"] == 64 and sampling[0]["rows"] == 8
    for r in steps["dpo"]:
        assert (r["rows"], r["completion_width"], r["update_tokens"]) == (2, 48, 96)
    # every phase was timed, and the preflight's tracer estimated the update of each part
    for p in parts:
        assert all(r["phases"]["update"]["seconds"] > 0 for r in steps[p])
        assert parts[p]["summary"]["memory"]["update"]["estimate"]["bytes"] > 0


@pytest.mark.slow
def test_gpu_check_without_trl_vllm_deepspeed_mlflow_runs_what_it_can(tmp_path):
    """A bare CUDA image (PyTorch, transformers, accelerate) lacks TRL, vLLM, DeepSpeed and mlflow: the script
    still runs PPO and DPO's pair sampling, skips GRPO and the DPO update, and says so (simulated here by making
    those imports fail in every process, as if they were not installed)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import os, sys\n"
        "for name in ('trl', 'vllm', 'deepspeed', 'mlflow'):\n"
        "    # a stand-in mlflow the script puts on the path stays importable, as it would where none is installed\n"
        "    if name == 'mlflow' and any(os.path.isfile(os.path.join(p, 'mlflow', '__init__.py'))\n"
        "                                for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p):\n"
        "        continue\n"
        "    sys.modules[name] = None  # import fails and importlib.util.find_spec answers None\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(hide)}
    done, report = run_gpu_check(tmp_path, "--steps", "1", env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "installed: trl no, vllm no, deepspeed no, mlflow no" in done.stdout
    parts = report["parts"]
    assert parts["grpo"]["status"] == "skipped" and "trl" in parts["grpo"]["reason"]
    assert parts["ppo"]["status"] == "ran"  # through the mlflow stand-in
    assert [r["kind"] for r in parts["ppo"]["records"]] == ["step"]
    assert parts["dpo"]["status"] == "partial"
    assert [r["kind"] for r in parts["dpo"]["records"]] == ["sampling"]
    for line in ("skipped: grpo: trl is not installed", "skipped: dpo update: TRL's DPOTrainer: trl is not installed",
                 "skipped: vLLM rollouts"):
        assert line in done.stdout, done.stdout
    assert "not traced: rlmt.memtrace needs trl" in done.stdout


# ----------------------------------------------------------------------------- ranks and devices (issue 14)


def test_auto_device_is_the_ranks_own_gpu(monkeypatch):
    """Under a launcher each rank loads onto cuda:<LOCAL_RANK>, not all onto GPU 0."""
    import torch

    from rlmt.models.loading import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == "cuda:1"
    assert resolve_device("cuda") == "cuda:1"
    assert resolve_device("cuda:3") == "cuda:3" and resolve_device("cpu") == "cpu"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == "cuda:0"
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        resolve_device("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == "cpu"


def test_only_the_main_process_opens_the_jobs_run(tmp_path, monkeypatch):
    """One MLflow run per job: a rank other than 0 opens none and hashes no inputs."""
    from mlflow.tracking import MlflowClient

    from rlmt import tracking

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"x" * 64)
    hashed = []
    real_digest = tracking.model_digest
    monkeypatch.setattr(tracking, "model_digest", lambda p, *a, **k: hashed.append(Path(p)) or real_digest(p, *a, **k))
    monkeypatch.setenv("RANK", "1")
    with tracking.stage_run("grpo", cell="c1", inputs={"policy": model_dir}, params={"lr": 1}, uri=uri) as run:
        import mlflow

        assert run is None and mlflow.active_run() is None
        tracking.log_outputs({"final": model_dir})  # a no-op without the run
    assert hashed == []
    monkeypatch.setenv("RANK", "0")
    with tracking.stage_run("grpo", cell="c1", inputs={"policy": model_dir}, params={"lr": 1}, uri=uri) as run:
        assert run is not None
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id])
    jobs = [r for r in runs if r.data.tags.get(tracking.TAG_STAGE) == "grpo"]
    assert len(jobs) == 1 and jobs[0].data.tags["rlmt.input.policy"].startswith(str(model_dir))
    assert hashed == [model_dir]  # once, by the main process


def test_trainers_score_with_the_reward_models_spec(tiny_zoo, monkeypatch):
    """GRPO, PPO and DPO build the scorer from RewardModelSpec; its max_tokens_per_batch bounds each forward."""
    import rlmt.models.loading as loading
    from rlmt.config import RewardModelSpec
    from rlmt.rewards import NamedReward
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train.job import cell_reward

    def answer_scorer(model_dir, fmt, spec, *, strict, device):  # what a trainer builds from the cell's entry
        return cell_reward(NamedReward("rm", {"rm": spec}, {"rm": model_dir}), fmt, strict=strict, device=device)

    spec = RewardModelSpec(source="tiny:reward", max_tokens_per_batch=64, max_length=48)
    scorer = answer_scorer(tiny_zoo["reward"], WARM_NOTHINK, spec, strict=False, device="cpu")
    assert scorer.max_tokens_per_batch == 64 and scorer.max_length == 48
    shapes = []
    forward = scorer.model.forward
    scorer.model.forward = lambda *a, **k: shapes.append(tuple(k["input_ids"].shape)) or forward(*a, **k)
    prompts = [[{"role": "user", "content": "word " * n}] for n in (1, 2, 3, 5, 8, 13, 21, 2, 1)]
    batch = scorer.score(prompts, [f"ok {n} " * (n % 4 + 1) for n in range(len(prompts))])  # all distinct
    assert len(batch.scores) == len(prompts) and sum(rows for rows, _ in shapes) == len(prompts)
    assert len(shapes) > 1 and all(rows * width <= 64 or rows == 1 for rows, width in shapes), shapes
    assert max(width for _, width in shapes) <= 48
    # trust_remote_code reaches the loader from the spec (ArmoRM's entry sets it)
    flags = []
    real_load = loading.load_reward_model
    monkeypatch.setattr(loading, "load_reward_model",
                        lambda *a, **k: flags.append(k.get("trust_remote_code")) or real_load(*a, **k))
    answer_scorer(tiny_zoo["reward"], WARM_NOTHINK, spec.model_copy(update={"trust_remote_code": True}),
                  strict=False, device="cpu")
    answer_scorer(tiny_zoo["reward"], WARM_NOTHINK, spec, strict=False, device="cpu")
    assert flags == [True, False]


class _ScorerReached(Exception):
    """Raised by the recording cell_reward below: the trainer got as far as building its reward."""


@pytest.mark.parametrize("algo", ["grpo", "dpo", "ppo"])
def test_the_cli_passes_the_cells_reward_model_entry_through_the_trainer_to_its_scorer(algo, tiny_zoo, tmp_path,
                                                                                        monkeypatch):
    """`rlmt train <algo>` -> train_<algo> -> cell_reward: the cell's `reward_models.<rm>` entry arrives whole
    (trust_remote_code and the token budget), with the real command and trainer up to the reward."""
    import importlib

    import polars as pl
    import yaml
    from typer.testing import CliRunner

    from rlmt.cli import app

    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["reward_models"]["tiny-rm"].update(max_tokens_per_batch=777, trust_remote_code=True)
    raw["algorithms"]["dpo"].update(samples_per_prompt=2, min_parsable=2)
    raw["generation"]["sampling"].update(max_new_tokens_nothink=4)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    rows = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"Say {i}."}], "source": "demo", "n_tokens": 4}
            for i in range(4)]
    pl.DataFrame(rows).write_parquet(tmp_path / "train.parquet")
    module = importlib.import_module(f"rlmt.train.{algo}")
    seen = []

    def recording_reward(reward, fmt, **kwargs):
        seen.append(reward)
        raise _ScorerReached

    monkeypatch.setattr(module if algo != "dpo" else importlib.import_module("rlmt.train.dpo_pairs"), "cell_reward",
                        recording_reward)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    result = CliRunner().invoke(app, ["train", algo, "--config", str(tmp_path / "config.yaml"),
                                      "--cell", f"{algo}__llama-base__warm-start__nothink__tiny-rm__demo",
                                      "--policy", str(tiny_zoo["llama-instruct"]), "--reward-model",
                                      str(tiny_zoo["reward"]), "--train", str(tmp_path / "train.parquet"),
                                      "--out", str(tmp_path / "out")])
    assert isinstance(result.exception, _ScorerReached), result.output
    [reward] = seen
    spec = reward.specs[reward.name]
    assert reward.name == "tiny-rm" and reward.inputs == {"tiny-rm": tiny_zoo["reward"]}
    assert spec.max_tokens_per_batch == 777 and spec.trust_remote_code is True and spec.source == "tiny:reward"


def test_dpo_refuses_a_samples_file_with_the_wrong_count_per_prompt(tmp_path):
    from rlmt.train.dpo import check_samples_per_prompt
    from rlmt.train.runtime import TrainingSetupError

    rows = [{"id": "a"}] * 3 + [{"id": "b"}] * 6
    with pytest.raises(TrainingSetupError, match=r"'b': 6") as err:
        check_samples_per_prompt(rows, 3, tmp_path / "dpo_samples.jsonl")
    assert "samples_per_prompt=3" in str(err.value)
    check_samples_per_prompt([{"id": "a"}] * 3, 3, tmp_path / "dpo_samples.jsonl")


def test_ppo_refuses_deepspeed_and_reads_fsdp2_from_the_launcher(monkeypatch):
    from types import SimpleNamespace

    from rlmt.train.ppo import check_launcher
    from rlmt.train.runtime import TrainingSetupError

    acc = SimpleNamespace(distributed_type=SimpleNamespace(name="MULTI_CPU"), num_processes=2)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(TrainingSetupError, match="fsdp2.yaml"):
        check_launcher(acc)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert check_launcher(acc) is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(TrainingSetupError, match="version 2"):
        check_launcher(acc)
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert check_launcher(acc) is True


@pytest.fixture()
def zero3_launcher_env(monkeypatch):
    """The environment `accelerate launch --config_file config/accelerate/zero3.yaml` gives each rank."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(ROOT / "config/deepspeed/zero3.json"))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO3_INIT", "true")
    yield
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize("algo", ["sft", "grpo", "dpo"])
def test_policy_loads_after_the_zero3_config_is_known(algo, tiny_zoo, tmp_path, monkeypatch, zero3_launcher_env):
    """The policy is loaded after TRL's arguments, so ZeRO-3 partitions it as it loads (zero3_init_flag)."""
    import polars as pl
    from transformers.integrations import is_deepspeed_zero3_enabled

    import rlmt.models.loading as loading
    from rlmt.config import DPOConfig, GRPOConfig, SFTConfig

    class Loaded(Exception):
        pass

    seen = []

    def load_and_stop(*args, **kwargs):
        seen.append(is_deepspeed_zero3_enabled())
        raise Loaded

    monkeypatch.setattr(loading, "load_causal_lm", load_and_stop)
    policy = tiny_zoo["llama-instruct"]
    prompts = tmp_path / "train.parquet"
    pl.DataFrame([{"id": str(i), "messages": [{"role": "user", "content": f"hi {i}"}], "source": "t", "n_tokens": 3}
                  for i in range(4)]).write_parquet(prompts)
    with pytest.raises(Loaded):
        if algo == "sft":
            from rlmt.train.sft import train_sft

            data = tmp_path / "sft.jsonl"
            data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                             {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                                    for i in range(4)))
            train_sft(policy, data, tmp_path / "out", SFTConfig(max_steps=1, global_batch_size=2,
                                                                per_device_train_batch_size=2))
        elif algo == "grpo":
            from rlmt.rewards import RuleReward
            from rlmt.thinking import ThinkingFormat
            from rlmt.train.grpo import train_grpo

            train_grpo(policy, RuleReward(ThinkingFormat.load(policy), lambda item: 0.0), prompts, None,
                       tmp_path / "out", GRPOConfig(max_steps=1))
        else:
            from rlmt.train.dpo import PAIRS_DIR, train_dpo

            pairs = tmp_path / "out" / PAIRS_DIR  # pairs already built: DPO goes straight to training
            pairs.mkdir(parents=True)
            rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": "a"}],
                     "rejected": [{"role": "assistant", "content": "b"}]} for i in range(4)]
            pl.DataFrame(rows).write_parquet(pairs / "train.parquet")
            pl.DataFrame(rows[:1]).write_parquet(pairs / "val.parquet")
            (pairs / "stats.json").write_text(json.dumps({"counts": {"pairs": 4}}))
            train_dpo(policy, tiny_zoo["reward"], prompts, tmp_path / "out",
                      DPOConfig(max_steps=1, global_batch_size=2, per_device_train_batch_size=1))
    assert seen == [True]
