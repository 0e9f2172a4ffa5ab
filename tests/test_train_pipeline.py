"""Tiny end-to-end training on CPU: SFT (think, nothink) -> GRPO -> DPO, crash + resume, MLflow records.

The learning check uses a rule reward applied to the *extracted answer* (the fraction of spaces
in it: word-like text, which a random-ish tiny policy can move towards in a dozen steps); the
reward-model path is exercised by the CLI GRPO run and by DPO with the tiny reward model.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from resume_helpers import kill_after_checkpoint, start

from rlmt.diagnostics import load_verdict, read_rollouts, run_verdict
from rlmt.rewards import AnswerItem, RuleReward
from rlmt.thinking import LONGCOT_FILE, WARM_NOTHINK, WARM_THINK, ThinkingFormat, sft_messages

# Module-scoped SFT trainings are charged to the first test; the kill -9 test waits up to 600 + 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[1]
CELL_THINK = "grpo__llama-base__warm-start__think__tiny-rm__demo"
CELL_DPO = "dpo__llama-base__warm-start__nothink__tiny-rm__demo"
WORDS = "plan write answer the user list short clear help code story kind calm".split()


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_zoo):
    """Inputs shared by the tests: SFT data, a prompt mixture, a tiny config."""
    import random

    import polars as pl

    d = tmp_path_factory.mktemp("train")
    rng = random.Random(0)
    rows = []
    for i in range(16):
        prompt = [{"role": "user", "content": f"Tell me {i} things about {rng.choice(WORDS)}"}]
        rows.append((str(i), prompt, "I plan " + " ".join(rng.choices(WORDS, k=4)), " ".join(rng.choices(WORDS, k=6))))
    for name, fmt in (("think", WARM_THINK), ("nothink", WARM_NOTHINK)):
        (d / f"sft_{name}.jsonl").write_text("".join(
            json.dumps({"id": i, "messages": sft_messages(p, t, a, fmt)}) + "\n" for i, p, t, a in rows))
    demo = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()][:12]
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 20} for r in demo]) \
        .write_parquet(d / "train.parquet")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["algorithms"] = {
        "sft": {"learning_rate": 1e-3, "num_train_epochs": 1, "global_batch_size": 8, "per_device_train_batch_size": 8,
                "max_length": 128, "save_steps": 1, "save_total_limit": 1},
        "grpo": {"learning_rate": 1e-4, "prompts_per_step": 2, "num_generations": 4, "per_device_train_batch_size": 8,
                 "max_steps": 4, "rollout": {"max_prompt_length": 256, "max_completion_length": 12},
                 "checkpoints": {"save_steps": 1, "save_total_limit": None}, "log_samples_every": 2},
        "dpo": {"samples_per_prompt": 4, "min_parsable": 2, "learning_rate": 5e-4, "num_train_epochs": 2,
                "global_batch_size": 4, "per_device_train_batch_size": 4, "max_length": 128,
                "rollout": {"max_prompt_length": 256, "max_completion_length": 12},
                "checkpoints": {"save_steps": 3, "save_total_limit": 1}},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _runs(uri, stage):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rlmt")
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`rlmt.stage` = '{stage}'",
                                      order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def sft_models(work, tiny_zoo, tmp_path_factory):
    """SFT think through the CLI (with its MLflow run), nothink through the function."""
    from typer.testing import CliRunner

    from rlmt.cli import app
    from rlmt.config import load_config
    from rlmt.train.sft import train_sft

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'sft.db'}"
    res = CliRunner().invoke(app, ["train", "sft", "--config", str(work / "config.yaml"), "--cell", CELL_THINK,
                                   "--model", str(tiny_zoo["llama-instruct"]), "--data", str(work / "sft_think.jsonl"),
                                   "--out", str(work / "sft-think")], env={"MLFLOW_TRACKING_URI": uri})
    assert res.exit_code == 0, res.output
    settings = load_config(work / "config.yaml").settings("sft")
    train_sft(tiny_zoo["llama-instruct"], work / "sft_nothink.jsonl", work / "sft-nothink", settings)
    return {"think": work / "sft-think", "nothink": work / "sft-nothink", "uri": uri}


def test_sft_writes_loadable_models_with_the_right_format(sft_models, work):
    from rlmt.models.loading import load_causal_lm

    assert ThinkingFormat.load(sft_models["think"]) == WARM_THINK
    assert json.loads((sft_models["think"] / LONGCOT_FILE).read_text())["longcot_delimiter"] == "</think>"
    assert not (sft_models["nothink"] / LONGCOT_FILE).exists()
    assert not Path(str(sft_models["think"]) + ".work").exists()
    for m in ("think", "nothink"):
        assert load_causal_lm(sft_models[m], device="cpu").num_parameters() > 1e6
    client, runs = _runs(sft_models["uri"], "sft")
    assert len(runs) == 1 and runs[0].data.tags["rlmt.cell"] == CELL_THINK
    assert runs[0].data.params["learning_rate"] == "0.001"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
    # the cell's think axis and the data must agree
    from typer.testing import CliRunner

    from rlmt.cli import app

    bad = CliRunner().invoke(app, ["train", "sft", "--config", str(work / "config.yaml"), "--cell", CELL_THINK,
                                   "--model", str(sft_models["nothink"]), "--data", str(work / "sft_nothink.jsonl"),
                                   "--out", str(work / "never")], env={"MLFLOW_TRACKING_URI": sft_models["uri"]})
    assert bad.exit_code == 2 and "the cell wants think data, the file holds warm-nothink examples" in bad.output


@pytest.fixture
def accelerate_state_reset():
    """An in-process bf16 training leaves accelerate's process-wide state at bf16 (TRL's Trainer makes the
    Accelerator): a later test's ``Accelerator(mixed_precision='no')`` then raises, or its computation runs under
    bf16 (both seen in a random-order run). Reset once the test is done."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)


def test_bf16_on_cpu_computes_in_bf16_over_fp32_weights(sft_models, work, tiny_zoo, tmp_path, accelerate_state_reset):
    """`bf16: true` on CPU: the same SFT as the fp32 one above, under bf16 autocast (AMX/AVX512-BF16 where the
    CPU has them): the weights it writes are fp32, they differ from the fp32 run's (bf16 arithmetic ran), and
    its update points the same way as the fp32 run's."""
    import torch
    from safetensors.torch import load_file

    from rlmt.config import load_config
    from rlmt.train.sft import train_sft

    settings = load_config(work / "config.yaml").settings("sft").model_copy(update={"bf16": True})
    out = train_sft(tiny_zoo["llama-instruct"], work / "sft_nothink.jsonl", tmp_path / "sft-bf16", settings)
    start = load_file(str(tiny_zoo["llama-instruct"] / "model.safetensors"))
    fp32 = load_file(str(sft_models["nothink"] / "model.safetensors"))
    bf16 = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in bf16.values()} == {torch.float32}
    names = [k for k in fp32 if not torch.equal(fp32[k], start[k])]
    assert names and any(not torch.equal(bf16[k], fp32[k]) for k in names)
    d32 = torch.cat([(fp32[k] - start[k]).flatten() for k in names])
    d16 = torch.cat([(bf16[k] - start[k]).flatten() for k in names])
    assert torch.nn.functional.cosine_similarity(d32, d16, dim=0) > 0.9


def test_grpo_with_bf16_on_cpu_steps_fp32_weights(sft_models, work, tmp_path, accelerate_state_reset):
    """TRL's GRPOTrainer under `bf16: true` on CPU (rollouts and updates in bf16 autocast): it trains, and the
    policy it writes is fp32 and moved."""
    import torch
    from safetensors.torch import load_file

    from rlmt.config import GRPOConfig
    from rlmt.train.grpo import train_grpo

    settings = GRPOConfig(learning_rate=1e-3, prompts_per_step=2, num_generations=4, per_device_train_batch_size=8,
                          max_steps=2, val_prompts=0, bf16=True,
                          rollout={"max_prompt_length": 256, "max_completion_length": 8},
                          checkpoints={"save_steps": 2})
    final = train_grpo(sft_models["nothink"], SPACE_FRACTION, work / "train.parquet", None, tmp_path / "grpo",
                       settings)
    start = load_file(str(sft_models["nothink"] / "model.safetensors"))
    trained = load_file(str(final / "model.safetensors"))
    assert {t.dtype for t in trained.values()} == {torch.float32}
    assert any(not torch.equal(trained[k], start[k]) for k in start)


def _space_fraction(item: AnswerItem) -> float:
    """Rule reward on the extracted answer (the policy is nothink: the whole output is the answer)."""
    return item.answer.count(" ") / len(item.answer) if item.answer else 0.0


SPACE_FRACTION = RuleReward(WARM_NOTHINK, _space_fraction)


@pytest.fixture(scope="module")
def grpo_learned(sft_models, work, tmp_path_factory):
    from rlmt.config import GRPOConfig
    from rlmt.tracking import stage_run
    from rlmt.train.grpo import train_grpo

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlruns') / 'grpo.db'}"
    settings = GRPOConfig(learning_rate=3e-3, prompts_per_step=2, num_generations=8, per_device_train_batch_size=16,
                          max_steps=12, rollout={"max_prompt_length": 256, "max_completion_length": 16},
                          checkpoints={"save_steps": 6, "save_total_limit": 1}, log_samples_every=4, seed=0)
    # MLFLOW_TRACKING_URI wins over a configured uri (rlmt.tracking.tracking_uri): pin it to this
    # fixture's store, so that an environment left by an earlier test cannot send the run elsewhere.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        with stage_run("grpo", cell="grpo__llama-base__warm-start__nothink__tiny-rm__demo", uri=uri) as run:
            final = train_grpo(sft_models["nothink"], SPACE_FRACTION, work / "train.parquet", None,
                               work / "grpo-nothink", settings)
    return {"final": final, "uri": uri, "run_id": run.info.run_id}


def test_grpo_learns_and_logs_metrics_and_samples(grpo_learned, work):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(grpo_learned["uri"])
    rid = grpo_learned["run_id"]
    rewards = [m.value for m in sorted(client.get_metric_history(rid, "reward"), key=lambda m: m.step)]
    assert len(rewards) == 12
    assert statistics.fmean(rewards[-5:]) > statistics.fmean(rewards[:5]), rewards
    logged = set(client.get_run(rid).data.metrics)
    for key in ("reward", "reward_std", "kl", "entropy", "loss", "learning_rate", "completions/mean_length",
                "completions/clipped_ratio", "clip_ratio/region_mean", "diag/thought_tokens_mean",
                "diag/answer_tokens_mean", "diag/malformed_share", "diag/answer_missing_share"):
        assert key in logged, key
    assert not any(k.startswith("answer/") for k in logged)  # one vocabulary (rlmt.diagnostics): diag/*
    # rlmt.diagnostics against TRL's own numbers of the same steps' rollouts, computed apart from it (float32
    # there: rel 1e-5). Clipped: TRL counts a completion without EOS, ours one at the token limit without it;
    # without stop strings (nothink) they are the same completions.
    for ours, trl in (("diag/reward_mean", "reward"), ("diag/reward_std", "reward_std"), ("diag/kl", "kl"),
                      ("diag/completion_tokens_mean", "completions/mean_length"),
                      ("diag/clipped_share", "completions/clipped_ratio")):
        a, b = ({m.step: m.value for m in client.get_metric_history(rid, name)} for name in (ours, trl))
        assert sorted(a) == list(range(1, 13)) and a == pytest.approx(b, rel=1e-5, abs=1e-6), ours
    steps = read_rollouts(work / "grpo-nothink")  # 12 steps of 2 prompts x 8 generations
    assert [s.step for s in steps] == list(range(1, 13)) and {len(s) for s in steps} == {16}
    assert load_verdict(work / "grpo-nothink") == run_verdict(steps)
    assert client.get_run(rid).data.tags["rlmt.length_verdict"] == run_verdict(steps).label
    tables = sorted(a.path for a in client.list_artifacts(rid, "samples"))
    assert tables == ["samples/step-000004.json", "samples/step-000008.json", "samples/step-000012.json"]
    table = json.loads(Path(client.download_artifacts(rid, tables[0])).read_text())
    assert {"thought", "answer", "reward", "prompt"} <= set(table["columns"]) and len(table["data"]) == 16
    tags = client.get_run(rid).data.tags
    assert "rlmt.output.checkpoint.step-6" in tags and "rlmt.output.final" in tags
    # keep-last-1, the final model is the last step and carries no thinking config (nothink)
    assert sorted(p.name for p in (work / "grpo-nothink").glob("step-*")) == ["step-12"]
    assert json.loads((grpo_learned["final"] / "selected.json").read_text())["step"] == 12
    assert not (grpo_learned["final"] / LONGCOT_FILE).exists()


@pytest.mark.parametrize("val_prompts", [3, 0])
def test_grpo_validation_samples_the_first_val_prompts_at_each_checkpoint(sft_models, work, tmp_path, val_prompts):
    """val_prompts N: at every checkpoint the first N val prompts, num_generations times each, are scored and the
    mean reward is kept with the checkpoint (best_val_reward selects by it); 0: no validation at all."""
    import polars as pl

    from rlmt.config import GRPOConfig
    from rlmt.train.grpo import train_grpo

    val = [{"id": f"v{i}", "messages": [{"role": "user", "content": f"VAL-{i} say hello"}], "source": "demo",
            "n_tokens": 8} for i in range(5)]
    pl.DataFrame(val).write_parquet(tmp_path / "val.parquet")
    seen: list[str] = []

    def reward(item: AnswerItem) -> float:
        text = item.prompt[-1]["content"]
        if "VAL-" in text:
            seen.append(text.split()[0])
        return _space_fraction(item)

    settings = GRPOConfig(learning_rate=1e-4, prompts_per_step=2, num_generations=4, per_device_train_batch_size=8,
                          max_steps=2, val_prompts=val_prompts,
                          rollout={"max_prompt_length": 256, "max_completion_length": 8},
                          checkpoints={"save_steps": 1, "select_step": "best_val_reward" if val_prompts else "last"})
    final = train_grpo(sft_models["nothink"], RuleReward(WARM_NOTHINK, reward), work / "train.parquet",
                       tmp_path / "val.parquet", tmp_path / "grpo", settings)
    selected = json.loads((final / "selected.json").read_text())
    if val_prompts:
        # 2 checkpoints x 3 prompts x 4 samples, and only the first three val prompts
        assert len(seen) == 2 * 3 * 4 and sorted(set(seen)) == ["VAL-0", "VAL-1", "VAL-2"]
        assert selected["rule"] == "best_val_reward" and selected["val_reward"] is not None
    else:
        assert seen == [] and selected["step"] == 2
    with pytest.raises(ValueError, match="needs validation"):
        GRPOConfig(val_prompts=0, checkpoints={"select_step": "best_val_reward"})


def test_grpo_cli_resumes_after_kill_9(sft_models, work, tiny_zoo, tmp_path):
    """kill -9 after the second checkpoint; the same command resumes there and finishes."""
    from mlflow.tracking import MlflowClient

    from rlmt.models.loading import load_causal_lm

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = work / "grpo-think"
    cmd = [sys.executable, "-m", "rlmt.cli", "train", "grpo", "--config", str(work / "config.yaml"), "--cell", CELL_THINK,
           "--policy", str(sft_models["think"]), "--reward-model", str(tiny_zoo["reward"]),
           "--train", str(work / "train.parquet"), "--out", str(out)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done_before = kill_after_checkpoint(start(cmd, env, tmp_path, tmp_path / "killed.log"), out, 2)
    assert not (out / "final").exists() and done_before[-1] < 4

    res = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.glob("step-*")) == ["step-1", "step-2", "step-3", "step-4"]  # none lost
    state = json.loads((out / "step-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    final = Path(res.stdout.strip().splitlines()[-1])
    assert final == out / "final" and json.loads((final / "selected.json").read_text())["step"] == 4
    assert ThinkingFormat.load(final) == WARM_THINK and ThinkingFormat.load(out / "step-3") == WARM_THINK
    load_causal_lm(final, device="cpu")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id],
                              filter_string="tags.`rlmt.stage` = 'grpo'", order_by=["attributes.start_time ASC"])
    # The killed run could not end itself; the resumed job found its process gone and ended it.
    assert [r.info.status for r in runs] == ["KILLED", "FINISHED"]
    assert "was gone" in runs[0].data.tags["rlmt.ended"]
    resumed_steps = [m.step for m in client.get_metric_history(runs[1].info.run_id, "reward")]
    assert min(resumed_steps) == done_before[-1] + 1 and max(resumed_steps) == 4
    assert "rewards/answer_reward/mean" in runs[1].data.metrics


def _margin(model_dir, pairs):
    """Mean over pairs of log p(chosen) - log p(rejected) under the model (assistant tokens only)."""
    import torch

    from rlmt.models.loading import load_causal_lm, load_tokenizer

    model, tok = load_causal_lm(model_dir, device="cpu").eval(), load_tokenizer(model_dir)

    def logp(prompt, answer):
        p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"]
        full = tok.apply_chat_template(prompt + answer, tokenize=True)["input_ids"]
        ids = torch.tensor([full])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(1, ids[0, 1:, None])[:, 0]
        return lp[len(p_ids) - 1:].sum().item()

    return statistics.fmean(logp(list(r["prompt"]), list(r["chosen"])) - logp(list(r["prompt"]), list(r["rejected"]))
                            for r in pairs)


def test_dpo_widens_the_margin_on_its_pairs(grpo_learned, work, tiny_zoo, tmp_path):
    import polars as pl
    from typer.testing import CliRunner

    from rlmt.cli import app

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    policy, out = grpo_learned["final"], work / "dpo"
    res = CliRunner().invoke(app, ["train", "dpo", "--config", str(work / "config.yaml"), "--cell", CELL_DPO,
                                   "--policy", str(policy), "--reward-model", str(tiny_zoo["reward"]),
                                   "--train", str(work / "train.parquet"), "--out", str(out)],
                             env={"MLFLOW_TRACKING_URI": uri})
    assert res.exit_code == 0, res.output
    stats = json.loads((out / "pairs" / "stats.json").read_text())["counts"]
    pairs = pl.read_parquet(out / "pairs" / "train.parquet").to_dicts()
    assert stats["prompts"] == 12 and stats["pairs"] == stats["train"] + stats["val"] and len(pairs) == stats["train"]
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert len(pl.read_parquet(out / "pairs" / "val.parquet")) == stats["val"] >= 1
    final = out / "final"
    assert not (final / LONGCOT_FILE).exists()  # nothink policy in, nothink model out
    assert _margin(final, pairs) > _margin(policy, pairs) + 0.1
    _, runs = _runs(uri, "dpo")
    assert "rewards/margins" in runs[0].data.metrics and "pairs.pairs" in runs[0].data.metrics
    # rlmt.diagnostics on the pairs: the samples are step 0 of the rollouts file, the pair verdict is tagged
    [samples] = read_rollouts(out)
    assert samples.step == 0 and len(samples) == 12 * 4  # 12 prompts x samples_per_prompt
    assert runs[0].data.metrics["diag/pairs"] == stats["pairs"] and "diag/reward_length_spearman" in runs[0].data.metrics
    assert runs[0].data.tags["rlmt.length_verdict"] == load_verdict(out).label and load_verdict(out).rule == "dpo"
