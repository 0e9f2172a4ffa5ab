"""PPO on tiny models: rollout masks, a learning signal on a rule reward, the CLI, and resume after kill -9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from resume_helpers import kill_after_checkpoint, start

from rlmt.config import PPOConfig
from rlmt.diagnostics import read_rollouts, run_verdict
from rlmt.rewards import RuleReward
from rlmt.thinking import WARM_NOTHINK, ThinkingFormat

ROOT = Path(__file__).resolve().parents[1]
CELL = "ppo__llama-base__zero__think__tiny-rm__demo"


def write_prompts(path: Path, n: int | None = None) -> Path:
    rows = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()][:n]
    pl.DataFrame({"id": [r["id"] for r in rows], "messages": [r["messages"] for r in rows],
                  "source": ["demo"] * len(rows), "n_tokens": [0] * len(rows)}).write_parquet(path)
    return path


class LetterShareReward(RuleReward):
    """A learnable rule reward on the extracted answer: 10 x the share of its characters that are 'e'.

    A random tiny policy samples near-uniform tokens, so the share starts low (~0.08) and rises as
    PPO makes tokens with an 'e' likelier: a signal that a few CPU steps can move.
    """

    def __init__(self, fmt: ThinkingFormat):
        super().__init__(fmt, lambda item: 10 * item.answer.count("e") / max(len(item.answer), 1))


def test_response_end_stops_at_eos_or_the_token_that_completes_a_stop_string(tiny_zoo):
    from rlmt.models.loading import load_tokenizer
    from rlmt.train.rollout import response_end

    tok = load_tokenizer(tiny_zoo["llama-base"])
    eos = {tok.eos_token_id}
    body = tok("<think> plan </think> <response> hi </response> trailing words", add_special_tokens=False)["input_ids"]
    n, ended = response_end(body, tok, eos, ["</response>"])
    assert ended and tok.decode(body[:n]).endswith("</response>") and "trailing" not in tok.decode(body[:n])
    n, ended = response_end(body[:3] + [tok.eos_token_id] + body[3:], tok, eos, [])
    assert (n, ended) == (4, True)
    assert response_end(body[:5], tok, eos, ["</response>"]) == (5, False)  # hit the length cap


def test_rollout_masks_prompt_and_padding_and_old_logprobs_match_the_update(tiny_zoo):
    """The response mask covers exactly the generated tokens; recomputing log-probs reproduces old_logprobs."""
    import torch

    from rlmt.models.loading import load_causal_lm, load_tokenizer
    from rlmt.train.rollout import response_logprobs, sample

    tok = load_tokenizer(tiny_zoo["llama-instruct"], padding_side="left")
    policy = load_causal_lm(tiny_zoo["llama-instruct"], device="cpu", dtype="float32")
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "Tell me a much longer story, please."}]]
    torch.manual_seed(0)
    ro = sample(policy, tok, prompts, max_prompt_length=64, max_new_tokens=12, temperature=0.8)
    assert ro.input_ids.shape[1] == ro.prompt_width + ro.response_mask.shape[1]
    assert ro.attention_mask[0, :ro.prompt_width].sum() < ro.attention_mask[1, :ro.prompt_width].sum()  # left padding
    for i, length in enumerate(ro.response_lengths.tolist()):
        assert ro.response_mask[i, :int(length)].all() and not ro.response_mask[i, int(length):].any()
        assert (ro.old_logprobs[i, int(length):] == 0).all()
    again = response_logprobs(policy, ro.input_ids, ro.attention_mask, ro.prompt_width, 0.8) * ro.response_mask
    assert torch.allclose(again, ro.old_logprobs, atol=1e-5)
    assert (ro.old_logprobs[ro.response_mask.bool()] < 0).all()


def _update_once(tiny_zoo, entropy_coef: float, lr: float = 1e-2, **overrides):
    """One ppo_update on a fixed rollout whose advantages are zero and whose returns equal the values: the
    policy's only gradient is the entropy bonus. Returns (entropy before, entropy after, optimizer steps)."""
    import torch
    from accelerate import Accelerator

    from rlmt.models.loading import load_causal_lm, load_tokenizer
    from rlmt.train import ppo_math as pm
    from rlmt.train.actor_critic import ActorCritic, load_critic
    from rlmt.train.ppo import PPOBatch, ppo_update
    from rlmt.train.rollout import sample

    settings = PPOConfig(learning_rate=lr, critic_lr=0.0, weight_decay=0.0, entropy_coef=entropy_coef,
                         rollout={"temperature": 1.0}, **overrides)
    tok = load_tokenizer(tiny_zoo["llama-instruct"], padding_side="left")
    policy = load_causal_lm(tiny_zoo["llama-instruct"], device="cpu", dtype="float32")
    model = ActorCritic(policy, load_critic(tiny_zoo["llama-instruct"], "value-head", fresh_head=True))
    optimizer = torch.optim.AdamW(model.param_groups(settings.learning_rate, settings.critic_lr, 0.0))
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    prompts = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(8)]
    ro = sample(policy, tok, prompts, max_prompt_length=64, max_new_tokens=10, temperature=1.0)

    def entropy() -> float:
        with torch.no_grad():
            logits, values = model(ro.input_ids, ro.attention_mask, ro.prompt_width)
        return float(pm.masked_mean(pm.entropy_from_logits(logits.float()), ro.response_mask)), values

    before, values = entropy()
    zeros = torch.zeros_like(ro.old_logprobs)
    batch = PPOBatch(rollout=ro, scores=torch.zeros(len(prompts)), values=values.float(), advantages=zeros,
                     returns=values.float(), kl=zeros)
    ppo_update(accelerator, model, optimizer, batch, settings)
    steps = {int(st["step"]) for st in optimizer.state.values()}
    return before, entropy()[0], steps


def test_ppo_takes_one_optimizer_update_per_rollout_at_the_papers_mini_batch(tiny_zoo):
    """verl's ppo_mini_batch_size = the rollout's prompts and ppo_epochs 1: one AdamW step per rollout (every
    parameter's step count is 1); a mini-batch of a quarter of the rollout takes four."""
    _, _, steps = _update_once(tiny_zoo, 0.001, mini_batch_size=8, micro_batch_size=4, ppo_epochs=1)
    assert steps == {1}
    _, _, steps = _update_once(tiny_zoo, 0.001, mini_batch_size=2, micro_batch_size=2, ppo_epochs=1)
    assert steps == {4}


def test_the_entropy_bonus_is_in_the_policy_gradient(tiny_zoo):
    """With zero advantages the clipped surrogate has no gradient: the policy moves only by the entropy bonus
    (paper: 0.001), and that move raises its entropy on the rollout; without the bonus it does not move."""
    # a small step (Adam moves every parameter by ~lr at its first step; at 1e-2 that overshoots the near-uniform
    # tiny policy's entropy maximum); measured here: +0.0044 nats at 1e-4
    before, after, _ = _update_once(tiny_zoo, 0.5, lr=1e-4, mini_batch_size=8, micro_batch_size=8)
    assert after > before + 1e-3, (before, after)
    before, after, _ = _update_once(tiny_zoo, 0.0, lr=1e-4, mini_batch_size=8, micro_batch_size=8)
    assert after == pytest.approx(before, abs=1e-6)


@pytest.mark.slow
def test_ppo_raises_mean_reward_on_a_rule_reward(tiny_zoo, tmp_path, mlflow_uri):
    """8 PPO steps (warm-start nothink policy, value-head critic) raise the mean rule reward; metrics reach MLflow."""
    import mlflow

    from rlmt.tracking import stage_run
    from rlmt.train.ppo import train_ppo

    train = write_prompts(tmp_path / "train.parquet")
    val = write_prompts(tmp_path / "val.parquet", 6)
    # lr 1e-2: sampling from exactly the tempered softmax the log-probs score (issue 28, defect 8) gives the tiny
    # policy less of a head start than the old hidden top_k 50 did (measured gain over 8 steps: +0.12 at 2e-3,
    # +1.08 at 1e-2)
    settings = PPOConfig(learning_rate=1e-2, critic_lr=1e-3, prompts_per_step=12, mini_batch_size=6,
                         micro_batch_size=6, ppo_epochs=2, max_steps=8, val_prompts=6,
                         rollout={"max_prompt_length": 128, "max_completion_length": 16, "temperature": 1.0},
                         checkpoints={"save_steps": 4, "save_total_limit": 1, "select_step": "best_val_reward"},
                         log_samples_every=4)
    with stage_run("ppo", cell="ppo-test-cell", rule="train") as run:
        final = train_ppo(tiny_zoo["llama-instruct"], LetterShareReward(WARM_NOTHINK), train, val, tmp_path / "out",
                          settings)
    history = json.loads((tmp_path / "out/step-8/trainer_state.json").read_text())["log_history"]
    rewards = [h["diag/reward_mean"] for h in history]
    first, last = sum(rewards[:2]) / 2, sum(rewards[-2:]) / 2
    assert last > first + 0.3, f"no learning signal: rewards per step {rewards}"
    for key in ("policy/entropy", "policy/approx_kl", "policy/clipfrac", "critic/loss", "critic/clipfrac",
                "critic/explained_variance", "diag/reward_std", "diag/completion_tokens_mean", "diag/malformed_share",
                "diag/thought_tokens_mean", "diag/answer_tokens_mean", "diag/clipped_share"):
        assert key in history[0]
    assert "diag/kl" not in history[0]  # kl_coef 0: no reference, no KL to log
    assert history[0]["diag/thought_tokens_mean"] == 0 and history[0]["diag/answer_tokens_mean"] > 0  # nothink
    # the rollouts file (rlmt.diagnostics) holds every step's 12 rollouts; the verdict is saved and tagged
    steps = read_rollouts(tmp_path / "out")
    assert [s.step for s in steps] == list(range(1, 9)) and {len(s) for s in steps} == {12}
    assert [sum(s.reward) / 12 for s in steps] == pytest.approx(rewards, rel=1e-6)
    assert mlflow.MlflowClient().get_run(run.info.run_id).data.tags["rlmt.length_verdict"] == run_verdict(steps).label
    # the checkpoint layout: kept checkpoints, final/ with selected.json, no critic or optimizer in final/
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("step-")) in (
        ["step-8"], ["step-4", "step-8"])
    selected = json.loads((final / "selected.json").read_text())
    assert selected["rule"] == "best_val_reward" and selected["step"] in (4, 8) and selected["val_reward"] is not None
    assert (final / "model.safetensors").exists() and not (final / "optimizer.pt").exists()
    assert not (final / "critic").exists()
    client = mlflow.MlflowClient()
    logged = client.get_metric_history(run.info.run_id, "diag/reward_mean")
    assert [m.step for m in logged] == list(range(1, 9))
    assert len(client.get_metric_history(run.info.run_id, "val/reward")) == 2
    assert any(a.path == "samples" for a in client.list_artifacts(run.info.run_id))


def _ppo_config(tmp_path: Path, critic: str) -> Path:
    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["grid"] = [{"algo": ["ppo"], "base": ["llama-base"], "start": ["zero"], "think": [True], "rm": ["tiny-rm"],
                    "mixture": ["demo"]}]
    raw["algorithms"]["ppo"].update({
        "prompts_per_step": 4, "mini_batch_size": 2, "micro_batch_size": 2, "max_steps": 4, "critic": critic,
        "val_prompts": 2, "rollout": {"max_prompt_length": 128, "max_completion_length": 12},
        "checkpoints": {"save_steps": 1, "save_total_limit": 2}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.timeout(1500)  # waits up to 600 s for step 2, then up to 600 s for the resumed run
def test_ppo_cli_resumes_after_kill_9_and_continues_the_global_step(tiny_zoo, tmp_path, mlflow_uri):
    """`rlmt train ppo` on a zero think policy with the real tiny RM and a token-classification critic:
    kill -9 after step 2's checkpoint; the rerun resumes at step 3 and finishes at step 4."""
    from rlmt.models.zero import convert_to_zero

    policy = convert_to_zero(tiny_zoo["llama-base"], tmp_path / "zero-think", think=True)
    config = _ppo_config(tmp_path, "token-classification")
    train = write_prompts(tmp_path / "train.parquet")
    val = write_prompts(tmp_path / "val.parquet", 2)
    out = tmp_path / "ckpt"
    cmd = [sys.executable, "-m", "rlmt.cli", "train", "ppo", "--config", str(config), "--cell", CELL,
           "--policy", str(policy), "--reward-model", str(tiny_zoo["reward"]), "--train", str(train),
           "--val", str(val), "--out", str(out)]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    kill_after_checkpoint(start(cmd, env, tmp_path, tmp_path / "killed.log"), out, 2, timeout=600)
    assert not (out / "final").exists()

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    resumed_from = int(done.stdout.split("resuming from ")[1].split(" at step ")[1].split()[0])
    assert resumed_from >= 2
    state = json.loads((out / "step-4/trainer_state.json").read_text())
    assert state["global_step"] == 4 and [h["step"] for h in state["log_history"]] == [1, 2, 3, 4]
    assert json.loads((out / "final/selected.json").read_text())["step"] == 4
    assert json.loads((out / "final/longcot_config.json").read_text())["longcot_delimiter"] == "<response>"
    assert json.loads((out / "step-4/critic/critic.json").read_text())["kind"] == "token-classification"
    assert sorted(p.name for p in out.iterdir()) == ["diagnostics", "final", "step-3", "step-4"]  # save_total_limit 2


def test_ppo_cli_rejects_a_cell_outside_the_grid(tmp_path, mlflow_uri):
    config = _ppo_config(tmp_path, "value-head")
    done = subprocess.run([sys.executable, "-m", "rlmt.cli", "train", "ppo", "--config", str(config), "--cell",
                           "ppo__nope__zero__think__tiny-rm__demo", "--policy", "x", "--reward-model", "y",
                           "--train", "t", "--out", "o"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert done.returncode == 2 and "not in the grid" in done.stderr
