"""On-policy DPO (PAPER.md §4.4): pairs sampled from the initial policy, scored answer-only, then TRL's DPOTrainer.

The pairs are built before training, by every process of the job for its share of the prompts
(:mod:`rlmt.train.dpo_pairs`), and saved beside the checkpoints (``OUT/pairs``); a rerun reuses
them, so a resumed run trains on exactly the same pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlmt.config import DPOConfig
from rlmt.diagnostics import load_verdict, log_verdict
from rlmt.thinking import ThinkingFormat
from rlmt.train import checkpoints as ckpt
from rlmt.train.callbacks import CheckpointCallback, MLflowMetricsCallback
from rlmt.train.dpo_pairs import PAIRS_DIR, build_pairs, check_samples_per_prompt, prepare_pairs, split_pairs
from rlmt.train.job import finish, note_loaded, process_state, rank_device, report_rank, train_from
from rlmt.train.runtime import accumulation_steps, precision_args, weights_dtype

# the pair builder's names stay importable from here, where the trainer's callers look for them
__all__ = ["PAIRS_DIR", "VAL_METRIC", "build_pairs", "check_samples_per_prompt", "prepare_pairs", "split_pairs",
           "train_dpo", "trl_dpo_args"]

VAL_METRIC = "eval_rewards/margins"


def _pair_dataset(path: Path):
    import polars as pl
    from datasets import Dataset

    rows = pl.read_parquet(path).select("prompt", "chosen", "rejected").to_dicts()
    return Dataset.from_list(rows) if rows else None


def trl_dpo_args(settings: DPOConfig, out: Path, *, n_pairs: int, has_val: bool, world: int | None = None):
    """TRL's DPOConfig for `settings` and `n_pairs` training pairs (a pure function: no model, no data).

    The global batch is the configured one (128), or less when there are fewer pairs than that.
    """
    from trl import DPOConfig as TRLDPOConfig

    per_device = settings.per_device_train_batch_size
    global_batch = min(settings.global_batch_size, max(n_pairs // per_device, 1) * per_device)
    return TRLDPOConfig(
        output_dir=str(out),
        beta=settings.beta,
        loss_type=["sigmoid"],
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation_steps(global_batch, per_device, world=world),
        per_device_eval_batch_size=per_device,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        max_length=settings.max_length,
        **precision_args(settings.bf16),
        # chosen + rejected of up to 4,096 tokens each: ~60 GiB of activations per GPU for an 8B model without it
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.checkpoints.save_steps,
        save_total_limit=None,
        eval_strategy="steps" if has_val else "no",
        eval_steps=settings.checkpoints.save_steps if has_val else None,
        logging_steps=1,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
    )


def train_dpo(policy_dir: str | Path, reward: Any, train_path: str | Path, out: str | Path,
              settings: DPOConfig, *, generation_backend: str = "auto", callbacks: list | None = None) -> Path:
    """Build on-policy pairs, train DPO, write ``out/step-<N>/`` and ``out/final/``; return final.

    `reward` scores the sampled answers (see :func:`rlmt.train.job.cell_reward`: the cell's NamedReward,
    a classifier dir, or an AnswerReward built already with the policy's format).

    Under a launcher every process samples and scores its share of the prompts on its own device
    (before TRL's arguments exist, so nothing of it is ZeRO-partitioned), the main process merges
    and writes the pairs, the others wait and read them. Then TRL's arguments, then the policy (see
    :mod:`rlmt.train.job`).
    """
    from trl import DPOTrainer

    from rlmt.models.loading import load_causal_lm, load_tokenizer

    state = process_state()
    device = rank_device(state)
    out = Path(out)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.discard_incomplete(out)
    state.wait_for_everyone()
    pairs_dir = prepare_pairs(policy_dir, reward, train_path, out, settings, backend=generation_backend,
                              device=device, state=state)
    stats = json.loads((pairs_dir / "stats.json").read_text())
    import mlflow

    if mlflow.active_run() is not None:
        from rlmt.tracking import _retry, log_dataset_input, log_outputs

        _retry(mlflow.log_metrics, {f"pairs.{k}": float(v) for k, v in stats["counts"].items()})
        if stats.get("diagnostics"):  # rlmt.diagnostics over the samples and pairs (pairs built before it have none)
            _retry(mlflow.log_metrics, stats["diagnostics"]["metrics"], step=0)
            if (verdict := load_verdict(out)) is not None:
                log_verdict(verdict)
        _retry(mlflow.log_dict, stats, "dpo_pairs_stats.json")
        log_outputs({"pairs": pairs_dir})
        log_dataset_input(pairs_dir / "train.parquet", f"{out.name}-pairs-train", "training")
        log_dataset_input(pairs_dir / "val.parquet", f"{out.name}-pairs-val", "validation")

    fmt = ThinkingFormat.load(policy_dir)
    resume = ckpt.latest_checkpoint(out)
    train_ds, val_ds = _pair_dataset(pairs_dir / "train.parquet"), _pair_dataset(pairs_dir / "val.parquet")
    tokenizer = load_tokenizer(policy_dir)
    # TRL's arguments before the policy: under ZeRO-3 the policy is then partitioned as it loads.
    args = trl_dpo_args(settings, out, n_pairs=len(train_ds), has_val=val_ds is not None)
    model = load_causal_lm(policy_dir, device=device, dtype=weights_dtype(settings.bf16))
    note_loaded("policy", model)
    ckpt_cb = CheckpointCallback(out, fmt, keep_last=settings.checkpoints.save_total_limit,
                                 select_rule=settings.checkpoints.select_step, val_metric=VAL_METRIC)
    trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                         processing_class=tokenizer, callbacks=[MLflowMetricsCallback(), ckpt_cb, *(callbacks or [])])
    train_from(trainer, resume)
    report_rank("dpo", state, trainer.accelerator.unwrap_model(trainer.model))
    return finish(out, fmt, settings.checkpoints.select_step, trainer.accelerator)
