"""Overhead of our GRPO (answer-only reward, MLflow logging, checkpoint layout) over plain TRL GRPOTrainer.

Same tiny policy, prompts, batch geometry (``rlmt.train.grpo.trl_grpo_args``) and seed; ``--steps``
optimizer steps each, one checkpoint at the last step:

- ours: ``rlmt.train.grpo.train_grpo`` inside a real MLflow job run (``rlmt.tracking.stage_run`` on
  a SQLite store, as ``rlmt train grpo`` opens it), so the metrics and samples callbacks log every
  step; the ``AnswerRewardScorer`` reward (extraction, re-templating with the reward model's
  template, length buckets); ``finish()`` (selecting the step, writing ``final/``, recording it in
  MLflow) and the end of the run;
- TRL: ``GRPOTrainer`` given the reward model directly (it templates prompt + completion itself),
  saving its checkpoint, then ``trainer.save_model(final/)`` as a TRL user would.

Each side is timed from TRL's train-begin callback to the end of its final write (model loading
excluded, ``final/`` included). The sides alternate order every repeat (TRL first, then ours first,
...), because a shared machine's load drifts. Prints min and median seconds per step of each side and
the ratio ours / TRL of the medians (target <= 1.10; the ratio of the minima is printed too). The old
ratio (the train loop alone, train begin to train end, as this script used to time it; now with the
MLflow run active) is printed beside it.

    python bench/grpo_overhead.py [--steps 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

TARGET = 1.10


class TrainTimer(TrainerCallback):
    start = end = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()


def make_inputs(root: Path) -> tuple[dict, Path]:
    import polars as pl

    from rlmt.models.tiny import build_zoo

    zoo = build_zoo(root / "zoo", ["llama-instruct", "reward"])
    demo = Path(__file__).resolve().parents[1] / "rlmt/resources/demo_prompts.jsonl"
    rows = [json.loads(line) for line in demo.read_text().splitlines()][:40]
    train = root / "train.parquet"
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 0} for r in rows]).write_parquet(train)
    return zoo, train


def run_ours(zoo, train, out, settings) -> tuple[float, float]:
    from rlmt.tracking import stage_run
    from rlmt.train.grpo import train_grpo

    shutil.rmtree(out, ignore_errors=True)
    timer = TrainTimer()
    with stage_run("grpo", cell="bench-grpo-overhead", rule="train", params=settings.model_dump(),
                   inputs={"train": train}):
        final = train_grpo(zoo["llama-instruct"], zoo["reward"], train, None, out, settings, callbacks=[timer])
    done = time.perf_counter()
    if not (final / "model.safetensors").is_file():
        raise SystemExit(f"ours: {final} has no model.safetensors")
    return timer.end - timer.start, done - timer.start


def run_trl(zoo, train, out, settings) -> tuple[float, float]:
    import polars as pl
    from datasets import Dataset
    from trl import GRPOTrainer

    from rlmt.models.loading import load_causal_lm, load_reward_model, load_tokenizer
    from rlmt.thinking import WARM_NOTHINK
    from rlmt.train.grpo import trl_grpo_args

    shutil.rmtree(out, ignore_errors=True)
    args = trl_grpo_args(settings, out, WARM_NOTHINK, has_val=False, use_vllm=False)
    rows = pl.read_parquet(train).select("id", "messages").to_dicts()
    ds = Dataset.from_list([{"id": r["id"], "prompt": r["messages"]} for r in rows])
    timer = TrainTimer()
    trainer = GRPOTrainer(model=load_causal_lm(zoo["llama-instruct"]), reward_funcs=load_reward_model(zoo["reward"]),
                          args=args, train_dataset=ds,
                          processing_class=load_tokenizer(zoo["llama-instruct"], padding_side="left"),
                          reward_processing_classes=load_tokenizer(zoo["reward"]), callbacks=[timer])
    trainer.train()
    trainer.save_model(str(out / "final"))
    return timer.end - timer.start, time.perf_counter() - timer.start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each side, alternating which goes first.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    a = parser.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)

    from rlmt.config import GRPOConfig

    settings = GRPOConfig(learning_rate=1e-5, prompts_per_step=4, num_generations=4, per_device_train_batch_size=16,
                          max_steps=a.steps, rollout={"max_prompt_length": 512, "max_completion_length": 32},
                          checkpoints={"save_steps": a.steps, "save_total_limit": 1}, log_samples_every=5, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns.db'}"
        zoo, train = make_inputs(root)
        sides = {"ours": run_ours, "trl": run_trl}
        per_step: dict[str, list[float]] = {"ours": [], "trl": []}  # train begin -> final/ written
        loop_only: dict[str, list[float]] = {"ours": [], "trl": []}  # train begin -> train end
        for r in range(a.repeats):
            for name in (("trl", "ours") if r % 2 == 0 else ("ours", "trl")):
                loop, whole = sides[name](zoo, train, root / name, settings)
                loop_only[name].append(loop / a.steps)
                per_step[name].append(whole / a.steps)
        import mlflow
        from mlflow.tracking import MlflowClient

        runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("rlmt").experiment_id],
                                          filter_string="tags.`rlmt.stage` = 'grpo'")
        logged = [len(MlflowClient().get_metric_history(run.info.run_id, "reward")) for run in runs]

    med = {k: statistics.median(v) for k, v in per_step.items()}
    low = {k: min(v) for k, v in per_step.items()}
    for k, label in (("ours", "ours (answer-only reward, MLflow run, final/)"), ("trl", "TRL (reward model direct, save_model)")):
        print(f"{label:<48} min {low[k]:.3f}  median {med[k]:.3f} s/step   runs: {[round(x, 3) for x in per_step[k]]}")
    import torch

    print(f"torch threads {torch.get_num_threads()}; our MLflow runs: {len(runs)}, 'reward' points logged per run: {logged}")
    old = statistics.median(loop_only["ours"]) / statistics.median(loop_only["trl"])
    print(f"old ratio ours/TRL (train loop only, final/ excluded, medians): {old:.3f}")
    ratio = med["ours"] / med["trl"]
    print(f"new ratio ours/TRL (final/ included, medians): {ratio:.3f}  (target <= {TARGET:.2f}); "
          f"minima: {low['ours'] / low['trl']:.3f}")
    ok = ratio <= TARGET and len(runs) == a.repeats and all(n == a.steps for n in logged)
    print("target met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
