"""Overhead of our GRPO (answer-only reward, logging, checkpoint layout) over plain TRL GRPOTrainer.

Same tiny policy, prompts, batch geometry and seed; 10 optimizer steps each:

- ours: ``rlmt.train.grpo.train_grpo`` with the ``AnswerRewardScorer`` reward (extraction,
  re-templating with the reward model's template, length bucketing), metrics/samples callbacks,
  and one checkpoint + final/ at the end;
- TRL: ``GRPOTrainer`` given the reward model directly (it templates prompt + completion itself).

Prints seconds per step for each (timed from train begin to train end, model loading excluded)
and the ratio ours / TRL (target <= 1.10). The two runs alternate ``--repeats`` times and the
medians are compared, because a shared machine's load drifts during a run.

    python bench/grpo_overhead.py [--steps 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback


class TrainTimer(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


def make_inputs(root: Path) -> tuple[dict, Path]:
    import polars as pl

    from rlmt.models.tiny import build_zoo

    zoo = build_zoo(root / "zoo", ["llama-instruct", "reward"])
    demo = Path(__file__).resolve().parents[1] / "rlmt/resources/demo_prompts.jsonl"
    rows = [json.loads(line) for line in demo.read_text().splitlines()][:40]
    train = root / "train.parquet"
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 0} for r in rows]).write_parquet(train)
    return zoo, train


def run_ours(zoo, train, out, settings) -> float:
    from rlmt.train.grpo import train_grpo

    timer = TrainTimer()
    shutil.rmtree(out, ignore_errors=True)
    train_grpo(zoo["llama-instruct"], zoo["reward"], train, None, out, settings, callbacks=[timer])
    return timer.seconds


def run_trl(zoo, train, out, settings) -> float:
    import polars as pl
    from datasets import Dataset
    from trl import GRPOTrainer

    from rlmt.models.loading import load_causal_lm, load_reward_model, load_tokenizer
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train.grpo import trl_grpo_args

    shutil.rmtree(out, ignore_errors=True)
    args = trl_grpo_args(settings, out, WARM_NOTHINK, has_val=False, use_vllm=False)
    args.save_strategy = "no"
    rows = pl.read_parquet(train).select("id", "messages").to_dicts()
    ds = Dataset.from_list([{"id": r["id"], "prompt": r["messages"]} for r in rows])
    timer = TrainTimer()
    trainer = GRPOTrainer(model=load_causal_lm(zoo["llama-instruct"]), reward_funcs=load_reward_model(zoo["reward"]),
                          args=args, train_dataset=ds,
                          processing_class=load_tokenizer(zoo["llama-instruct"], padding_side="left"),
                          reward_processing_classes=load_tokenizer(zoo["reward"]), callbacks=[timer])
    trainer.train()
    return timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    a = parser.parse_args()

    from rlmt.config import GRPOConfig

    settings = GRPOConfig(learning_rate=1e-5, prompts_per_step=4, num_generations=4, per_device_train_batch_size=16,
                          max_steps=a.steps, rollout={"max_prompt_length": 512, "max_completion_length": 32},
                          checkpoints={"save_steps": a.steps, "save_total_limit": 1}, log_samples_every=5, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        zoo, train = make_inputs(root)
        ours, trl = [], []
        for _ in range(a.repeats):
            trl.append(run_trl(zoo, train, root / "trl", settings) / a.steps)
            ours.append(run_ours(zoo, train, root / "ours", settings) / a.steps)
    o, t = statistics.median(ours), statistics.median(trl)
    print(f"ours (answer-only reward): {o:.3f} s/step   runs: {[round(x, 3) for x in ours]}")
    print(f"TRL (reward model direct): {t:.3f} s/step   runs: {[round(x, 3) for x in trl]}")
    print(f"ratio ours/TRL: {o / t:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
