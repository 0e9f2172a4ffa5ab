"""GPU sanity and speed check of the real RL trainers: rollout tokens/s, update tokens/s and MFU.

It runs ``rlmt.train.grpo.train_grpo`` (TRL's GRPOTrainer) and ``rlmt.train.ppo.train_ppo`` (our
actor-critic loop) for a few steps on a model directory written here, with the answer-only
reward of the tiny zoo's reward model. Nothing is downloaded and nothing is simulated: the
trainers sample, score and update exactly as a job does; this script only times them.

- model: on a GPU the Qwen2.5-0.5B body (24 layers, hidden 896, 14/2 heads, MLP 4864) with
  random weights and the zoo Qwen tokenizer's 2,304-token vocabulary (so the 136M-parameter
  embedding of the real vocabulary is left out), in bf16; on CPU (or ``--tiny``) the zoo's
  tiny Qwen in fp32, which is how the test suite runs this script;
- rollout: the time inside the policy's ``generate`` calls and the tokens they produced;
- update: the rest of each optimizer step minus the reward model's time (GRPO: TRL's
  loss/backward/step plus its reference forward; PPO: ``ppo_update``), over the tokens of the
  step's padded prompt + response batch;
- MFU: model FLOPs of the update (6 x parameters x tokens for forward + backward, plus
  2 x parameters x tokens for GRPO's reference-model forward; PPO counts policy and critic)
  per second, over the *measured* dense matmul rate of this device (a timed square matmul),
  not the datasheet's.

    python bench/gpu_check.py             # GPU: Qwen2.5-0.5B body, bf16
    python bench/gpu_check.py --tiny      # any machine: the tiny zoo shape
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch

QWEN_05B_BODY = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, max_position_embeddings=32768)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype, n: int) -> float:
    """Measured dense matmul rate (TFLOP/s) of this device at this dtype."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    reps = 20 if device.startswith("cuda") else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def write_inputs(work: Path, tiny: bool, n_prompts: int) -> dict[str, Path]:
    """The policy dir (zoo tokenizer; tiny or 0.5B-body weights), the zoo reward model and a prompt file."""
    import polars as pl
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlmt.models.tiny import build_zoo

    zoo = build_zoo(work / "zoo", ["qwen-instruct", "reward"])
    policy = zoo["qwen-instruct"]
    if not tiny:
        config = AutoConfig.from_pretrained(str(policy))
        for key, value in QWEN_05B_BODY.items():
            setattr(config, key, value)
        config.head_dim = config.hidden_size // config.num_attention_heads
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(str(policy), safe_serialization=True)
    words = "plan write answer list short clear help code story kind calm bright".split()
    rows = [{"id": str(i), "messages": [{"role": "user", "content": f"Write about {words[i % len(words)]} {i}"}],
             "source": "bench", "n_tokens": 6} for i in range(n_prompts)]
    pl.DataFrame(rows).write_parquet(work / "prompts.parquet")
    return {"policy": policy, "reward": zoo["reward"], "prompts": work / "prompts.parquet"}


class Clock:
    """Time and tokens inside ``generate`` (the rollout) and the reward model; step boundaries from the trainer."""

    def __init__(self):
        self.generate_s = self.reward_s = 0.0
        self.generated = self.batch_tokens = 0
        self.steps: list[dict] = []
        self._mark = None

    @contextlib.contextmanager
    def timing_generate(self):
        from transformers.generation.utils import GenerationMixin

        original = GenerationMixin.generate
        clock = self

        def generate(model, *args, **kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            sync()
            t = time.perf_counter()
            out = original(model, *args, **kwargs)
            sync()
            clock.generate_s += time.perf_counter() - t
            sequences = out.sequences if hasattr(out, "sequences") else out
            clock.generated += sequences.shape[0] * (sequences.shape[1] - ids.shape[1])
            clock.batch_tokens += sequences.numel()
            return out

        GenerationMixin.generate = generate
        try:
            yield
        finally:
            GenerationMixin.generate = original

    def timed_reward(self, fn):
        def reward(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.reward_s += time.perf_counter() - t

        reward.__name__ = getattr(fn, "__name__", "reward")
        return reward

    def step_begin(self):
        sync()
        self.generate_s = self.reward_s = 0.0
        self.generated = self.batch_tokens = 0
        self._mark = time.perf_counter()

    def step_end(self):
        sync()
        total = time.perf_counter() - self._mark
        self.steps.append({"total_s": total, "rollout_s": self.generate_s, "reward_s": self.reward_s,
                           "generated": self.generated, "batch_tokens": self.batch_tokens})


def run_grpo(inputs: dict, work: Path, args, clock: Clock) -> int:
    from transformers import TrainerCallback

    from rlmt.config import GRPOConfig
    from rlmt.rewards import AnswerRewardScorer
    from rlmt.thinking import ThinkingFormat
    from rlmt.train.grpo import train_grpo

    class StepClock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            clock.step_begin()

        def on_step_end(self, *a, **k):
            clock.step_end()

    settings = GRPOConfig(prompts_per_step=args.batch // args.group, num_generations=args.group,
                          per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=1e-6,
                          rollout={"max_prompt_length": 256, "max_completion_length": args.response,
                                   "use_vllm": False},
                          checkpoints={"save_steps": args.steps}, log_samples_every=10_000)
    scorer = AnswerRewardScorer(inputs["reward"], ThinkingFormat.load(inputs["policy"]))
    with clock.timing_generate():
        train_grpo(inputs["policy"], None, inputs["prompts"], None, work / "grpo", settings,
                   reward_fn=clock.timed_reward(scorer.as_trl_reward_func()), callbacks=[StepClock()])
    from rlmt.models.loading import load_causal_lm

    return sum(p.numel() for p in load_causal_lm(inputs["policy"], device="cpu").parameters())


def run_ppo(inputs: dict, work: Path, args, clock: Clock) -> int:
    import rlmt.train.ppo as ppo
    from rlmt.config import PPOConfig

    original_experience, original_update = ppo.make_experience, ppo.ppo_update
    sizes = {}

    def make_experience(accelerator, model, *a, **k):
        clock.step_begin()
        core = accelerator.unwrap_model(model)
        sizes["params"] = sum(p.numel() for p in core.parameters())
        return original_experience(accelerator, model, *a, **k)

    def ppo_update(accelerator, model, optimizer, batch, settings):
        out = original_update(accelerator, model, optimizer, batch, settings)
        clock.step_end()
        clock.steps[-1]["batch_tokens"] = batch.rollout.input_ids.numel()
        return out

    class TimedScorer:
        def __init__(self, scorer):
            self.scorer = scorer
            self.device = scorer.device
            self.model = scorer.model

        def score(self, prompts, outputs):
            t = time.perf_counter()
            try:
                return self.scorer.score(prompts, outputs)
            finally:
                clock.reward_s += time.perf_counter() - t

    from rlmt.rewards import AnswerRewardScorer
    from rlmt.thinking import ThinkingFormat

    settings = PPOConfig(prompts_per_step=args.batch, mini_batch_size=args.batch, micro_batch_size=args.batch,
                         generation_batch_size=args.batch, max_steps=args.steps, entropy_coef=0.001, val_prompts=0,
                         rollout={"max_prompt_length": 256, "max_completion_length": args.response},
                         checkpoints={"save_steps": args.steps}, log_samples_every=0)
    scorer = TimedScorer(AnswerRewardScorer(inputs["reward"], ThinkingFormat.load(inputs["policy"])))
    ppo.make_experience, ppo.ppo_update = make_experience, ppo_update
    try:
        with clock.timing_generate():
            ppo.train_ppo(inputs["policy"], None, inputs["prompts"], None, work / "ppo", settings, scorer=scorer)
    finally:
        ppo.make_experience, ppo.ppo_update = original_experience, original_update
    return sizes["params"]


def report(algo: str, clock: Clock, params: int, peak: float, forward_passes: int) -> None:
    """Per-step and summary lines; MFU counts 6 N T for the update plus 2 N T per extra forward pass."""
    rollout_tps, update_tps, mfus = [], [], []
    for i, s in enumerate(clock.steps, 1):
        update_s = max(s["total_s"] - s["rollout_s"] - s["reward_s"], 1e-9)
        rollout_tps.append(s["generated"] / max(s["rollout_s"], 1e-9))
        update_tps.append(s["batch_tokens"] / update_s)
        mfus.append((6 + 2 * forward_passes) * params * s["batch_tokens"] / update_s / (peak * 1e12))
        print(f"{algo} step {i}: rollout {rollout_tps[-1]:,.0f} tok/s  update {update_tps[-1]:,.0f} tok/s  "
              f"MFU {100 * mfus[-1]:.2f}%  (step {s['total_s']:.2f}s: rollout {s['rollout_s']:.2f}s, "
              f"reward {s['reward_s']:.2f}s)")
    # the first step includes warm-up (kernel selection, allocator growth): report the later ones
    later = slice(1, None) if len(clock.steps) > 1 else slice(None)

    def mean(xs):
        return sum(xs[later]) / len(xs[later])

    print(f"{algo} summary: params {params / 1e6:.1f}M  rollout {mean(rollout_tps):,.0f} tok/s  "
          f"update {mean(update_tps):,.0f} tok/s  MFU {100 * mean(mfus):.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny zoo shape (the default on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default 32 GPU, 4 CPU)")
    parser.add_argument("--group", type=int, default=4, help="GRPO group size (completions per prompt)")
    parser.add_argument("--response", type=int, default=None, help="max response tokens (default 512 GPU, 8 CPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    gpu = torch.cuda.is_available()
    tiny = args.tiny or not gpu
    args.batch = args.batch or (4 if tiny else 32)
    args.response = args.response or (8 if tiny else 512)
    device = "cuda:0" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
    peak = matmul_tflops(device, dtype, 1024 if not gpu else 8192)
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"device: {name}  dtype: {str(dtype).split('.')[-1]}  shape: {'tiny' if tiny else 'qwen2.5-0.5b body'}  "
          f"measured matmul: {peak:.2f} TFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        inputs = write_inputs(work, tiny, n_prompts=args.batch * (args.steps + 1))
        clock = Clock()
        params = run_grpo(inputs, work, args, clock)
        report("grpo", clock, params, peak, forward_passes=1)  # + the reference model's forward (beta > 0)
        clock = Clock()
        params = run_ppo(inputs, work, args, clock)
        report("ppo", clock, params, peak, forward_passes=0)
        print(json.dumps({"work": str(work)}))


if __name__ == "__main__":
    main()
