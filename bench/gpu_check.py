"""GPU sanity and speed check for the RL updates: rollout tokens/s, update tokens/s and MFU.

On a GPU it builds a Qwen2.5-0.5B-shaped model (24 layers, hidden 896, 14/2 heads, vocab 151,936)
with random weights (nothing is downloaded), then runs 3 GRPO steps and 3 PPO steps in bf16:

- rollout: ``generate`` from random prompts, every response exactly ``--response`` tokens long
  (so tokens/s is comparable between runs);
- GRPO update: group-normalised advantages, PPO-clipped policy loss (``rlmt.train.ppo_math``);
- PPO update: the actor-critic module of ``rlmt.train.actor_critic`` (policy + value-head critic),
  GAE, whitened advantages, clipped policy and value losses, one optimizer step.

MFU = model FLOPs of the update (6 x parameters x tokens for forward + backward, for the critic
too in PPO) per second, divided by the card's *measured* dense bf16 matmul rate (a timed
8192^3 matmul), not the datasheet's. On CPU (or with ``--tiny``) the same steps run on a tiny
model in fp32, which is how the test suite exercises this script.

    python bench/gpu_check.py             # GPU: Qwen2.5-0.5B shape, bf16
    python bench/gpu_check.py --tiny      # any machine: tiny shape
"""

from __future__ import annotations

import argparse
import time

import torch

from rlmt.train import ppo_math as pm
from rlmt.train.actor_critic import ActorCritic, ValueHeadCritic

QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=32768)
TINY = dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=1024)


def build(shape: dict, device: str, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model

    torch.manual_seed(0)
    config = Qwen2Config(**shape, bos_token_id=0, eos_token_id=1, pad_token_id=2)
    config._attn_implementation = "sdpa"
    policy = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    critic = ValueHeadCritic(Qwen2Model(config), config.hidden_size).to(device=device, dtype=dtype)
    return policy, critic


def matmul_tflops(device: str, dtype, n: int) -> float:
    """Measured dense matmul rate (TFLOP/s) of this device at this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def rollout(policy, batch: int, prompt: int, response: int, vocab: int, device: str):
    prompt_ids = torch.randint(3, vocab, (batch, prompt), device=device)
    mask = torch.ones_like(prompt_ids)
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        out = policy.generate(input_ids=prompt_ids, attention_mask=mask, do_sample=True, max_new_tokens=response,
                              min_new_tokens=response, pad_token_id=2, eos_token_id=1)
    sync(device)
    return out, time.perf_counter() - t


def update_step(model, optimizer, ids, prompt: int, algo: str, group: int, scores: torch.Tensor):
    """One optimizer step of GRPO (policy only) or PPO (policy + critic) on a sampled batch."""
    attention = torch.ones_like(ids)
    mask = torch.ones(ids.shape[0], ids.shape[1] - prompt, device=ids.device)
    with torch.no_grad():
        logits, old_values = model(ids, attention, prompt, with_values=algo == "ppo")
        old_logprobs = pm.logprobs_from_logits(logits, ids[:, prompt:])
    if algo == "grpo":
        grouped = scores.view(-1, group)
        adv_seq = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1)
        advantages, returns = adv_seq[:, None] * mask, None
    else:
        rewards = pm.token_level_rewards(scores, mask)
        advantages, returns = pm.gae(rewards, old_values.float(), mask)
        advantages = pm.masked_whiten(advantages, mask)
    logits, values = model(ids, attention, prompt, with_values=algo == "ppo")
    loss, _ = pm.policy_loss(pm.logprobs_from_logits(logits, ids[:, prompt:]), old_logprobs, advantages, mask, 0.2)
    if algo == "ppo":
        loss = loss + pm.value_loss(values.float(), old_values.float(), returns, mask, 0.5)[0]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model (the default on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 16 GPU, 4 CPU)")
    parser.add_argument("--group", type=int, default=4, help="GRPO group size")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 256 GPU, 8 CPU)")
    parser.add_argument("--response", type=int, default=None, help="response tokens (default 512 GPU, 8 CPU)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    shape = TINY if tiny else QWEN_05B
    batch = args.batch or (4 if tiny else 16)
    prompt = args.prompt or (8 if tiny else 256)
    response = args.response or (8 if tiny else 512)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = matmul_tflops(device, dtype, 1024 if tiny else 8192)
    print(f"device: {name}  dtype: {str(dtype).split('.')[-1]}  shape: {'tiny' if tiny else 'qwen2.5-0.5b'}  "
          f"measured matmul: {peak:.2f} TFLOP/s")

    for algo in ("grpo", "ppo"):
        policy, critic = build(shape, device, dtype)
        model = ActorCritic(policy, critic)
        params = sum(p.numel() for p in policy.parameters()) + (
            sum(p.numel() for p in critic.parameters()) if algo == "ppo" else 0)
        optimizer = torch.optim.AdamW(model.param_groups(1e-6, 1e-5, 0.0))
        rollout_tps, update_tps, mfus = [], [], []
        for step in range(1, args.steps + 1):
            ids, t_roll = rollout(policy, batch, prompt, response, shape["vocab_size"], device)
            scores = torch.randn(batch, device=device)
            sync(device)
            t = time.perf_counter()
            update_step(model, optimizer, ids, prompt, algo, args.group, scores)
            sync(device)
            t_update = time.perf_counter() - t
            tokens = ids.numel()
            rollout_tps.append(batch * response / t_roll)
            update_tps.append(tokens / t_update)
            # 6 N T for the update pass, plus 2 N T for the old log-probs/values forward before it
            mfus.append(8 * params * tokens / t_update / (peak * 1e12))
            print(f"{algo} step {step}: rollout {rollout_tps[-1]:,.0f} tok/s  update {update_tps[-1]:,.0f} tok/s  "
                  f"MFU {100 * mfus[-1]:.1f}%")
        # the first step includes warm-up (kernel selection, allocator growth): report the later ones
        later = slice(1, None) if args.steps > 1 else slice(None)
        mean = lambda xs: sum(xs[later]) / len(xs[later])  # noqa: E731
        print(f"{algo} summary: params {params / 1e6:.1f}M  rollout {mean(rollout_tps):,.0f} tok/s  "
              f"update {mean(update_tps):,.0f} tok/s  MFU {100 * mean(mfus):.1f}%")
        del model, optimizer, policy, critic
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
