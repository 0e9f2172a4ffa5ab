"""On-policy DPO (PAPER.md §4.4): pairs sampled from the initial policy, scored answer-only, then TRL's DPOTrainer.

Pair building, as the reference ``build_dpo_dataset.py`` does it, in one round:

1. sample ``samples_per_prompt`` (8) responses per training prompt from the *initial* policy
   (the generation API; resumable, ``OUT/dpo_samples.jsonl``), temperature 0.7;
2. score each *answer* with the reward model (the same :class:`~rlmt.rewards.AnswerRewardScorer`
   GRPO uses; the thought is never scored);
3. keep prompts with at least ``min_parsable`` (4) responses whose answer was found;
4. chosen = the highest-scoring parsable response, rejected = the lowest (a prompt whose
   parsable responses all score the same has no preference and is dropped, counted as ``tied``);
5. drop pairs whose prompt + longer response exceed ``max_pair_tokens`` (8192);
6. split 97/3 into train/validation with seed 42.

The chosen/rejected texts are the raw responses the policy wrote (thought included), which is
what DPO must raise or lower the likelihood of. Pairs and counts are saved beside the
checkpoints (``OUT/pairs/{train,val}.parquet``, ``OUT/pairs/stats.json``); a rerun reuses them,
so a resumed run trains on exactly the same pairs.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from rlmt.config import DPOConfig, RewardModelSpec
from rlmt.thinking import ThinkingFormat
from rlmt.train import checkpoints as ckpt
from rlmt.train.callbacks import CheckpointCallback, MLflowMetricsCallback
from rlmt.train.job import answer_scorer, finish, note_loaded, on_main_then_wait, process_state, rank_device, report_rank, train_from
from rlmt.train.runtime import (TrainingSetupError, accumulation_steps, precision_args, prompt_tokens, read_prompt_table,
                                weights_dtype)

VAL_METRIC = "eval_rewards/margins"
PAIRS_DIR = "pairs"


def sample_responses(policy_dir: str | Path, rows: list[dict], out_jsonl: Path, settings: DPOConfig, *,
                     backend: str = "auto", batch_size: int = 16) -> list[dict]:
    """`samples_per_prompt` responses per prompt from the policy (resumable generations file)."""
    from rlmt.generation import SamplingParams, generate_file, read_generations

    fmt = ThinkingFormat.load(policy_dir)
    params = SamplingParams(temperature=settings.rollout.temperature, top_p=settings.rollout.top_p,
                            max_new_tokens=settings.rollout.max_completion_length, n=settings.samples_per_prompt,
                            seed=settings.seed, stop=tuple(fmt.stop_strings))
    generate_file(policy_dir, [(str(r["id"]), r["messages"]) for r in rows], out_jsonl, params, backend=backend,
                  batch_size=batch_size)
    return read_generations(out_jsonl)


def build_pairs(generations: list[dict], scores: list[float], tokenizer, settings: DPOConfig) -> tuple[list[dict], Counter]:
    """Chosen/rejected pairs from scored generations (rows of one prompt share ``id``)."""
    counts: Counter[str] = Counter()
    by_id: dict[str, list[tuple[dict, float]]] = {}
    for row, score in zip(generations, scores):
        by_id.setdefault(str(row["id"]), []).append((row, score))
    counts["prompts"] = len(by_id)
    pairs = []
    for rid, group in by_id.items():
        parsable = [(r, s) for r, s in group if r["answer_found"]]
        if len(parsable) < settings.min_parsable:
            counts["too_few_parsable"] += 1
            continue
        best = max(parsable, key=lambda x: x[1])
        worst = min(parsable, key=lambda x: x[1])
        if best[1] == worst[1]:
            counts["tied"] += 1
            continue
        prompt = best[0]["prompt"]
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in (best[0]["output"], worst[0]["output"]))
        if prompt_tokens(tokenizer, prompt) + longest > settings.max_pair_tokens:
            counts["too_long"] += 1
            continue
        pairs.append({"id": rid, "prompt": prompt,
                      "chosen": [{"role": "assistant", "content": best[0]["output"]}],
                      "rejected": [{"role": "assistant", "content": worst[0]["output"]}],
                      "chosen_score": float(best[1]), "rejected_score": float(worst[1])})
    counts["pairs"] = len(pairs)
    return pairs, counts


def split_pairs(pairs: list[dict], val_fraction: float, seed: int = 42) -> tuple[list[dict], list[dict]]:
    """Seeded shuffle, then the last ``val_fraction`` (at least one pair when there are two or more) is validation."""
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) >= 2:
        n_val = max(n_val, 1)
    return order[: len(order) - n_val], order[len(order) - n_val:]


def prepare_pairs(policy_dir: str | Path, reward_model_dir: str | Path, train_path: str | Path, out: Path,
                  settings: DPOConfig, *, reward_spec: RewardModelSpec | None = None, backend: str = "auto",
                  device: str = "auto") -> Path:
    """Sample, score and pair; write ``out/pairs/{train,val}.parquet`` + stats.json (reused when present).

    One process only: under a launcher :func:`train_dpo` calls it on the main process while the
    other ranks wait, so the samples file and the pairs are written once.
    """
    import polars as pl

    from rlmt.models.loading import load_tokenizer

    pairs_dir = out / PAIRS_DIR
    if (pairs_dir / "stats.json").is_file():
        return pairs_dir
    fmt = ThinkingFormat.load(policy_dir)
    rows = read_prompt_table(train_path)
    generations = sample_responses(policy_dir, rows, out / "dpo_samples.jsonl", settings, backend=backend)
    check_samples_per_prompt(generations, settings.samples_per_prompt, out / "dpo_samples.jsonl")
    scorer = answer_scorer(reward_model_dir, fmt, reward_spec, strict=settings.strict, device=device)
    batch = scorer.score([g["prompt"] for g in generations], [g["output"] for g in generations], progress=True)
    del scorer
    pairs, counts = build_pairs(generations, batch.scores, load_tokenizer(policy_dir), settings)
    if len(pairs) < 2:
        raise TrainingSetupError(f"only {len(pairs)} DPO pair(s) survived the filters ({dict(counts)}); "
                                 "more prompts or samples_per_prompt are needed")
    train, val = split_pairs(pairs, settings.val_fraction, seed=42)
    counts["train"], counts["val"] = len(train), len(val)
    tmp = out / f"{PAIRS_DIR}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(train).write_parquet(tmp / "train.parquet")
    pl.DataFrame(val if val else [], schema=pl.DataFrame(train).schema).write_parquet(tmp / "val.parquet")
    (tmp / "stats.json").write_text(json.dumps({"counts": dict(counts), "malformed_fraction": batch.malformed_fraction},
                                               indent=2) + "\n")
    tmp.rename(pairs_dir)
    return pairs_dir


def check_samples_per_prompt(generations: list[dict], n: int, path: Path) -> None:
    """Every prompt has exactly `n` samples ("best vs worst of 8" must not become "of 16")."""
    counts = Counter(str(g["id"]) for g in generations)
    wrong = {rid: c for rid, c in counts.items() if c != n}
    if wrong:
        shown = ", ".join(f"{rid!r}: {c}" for rid, c in list(wrong.items())[:5])
        raise TrainingSetupError(f"{path}: {len(wrong)} prompt(s) do not have exactly samples_per_prompt={n} "
                                 f"samples ({shown}); delete the file to sample again")


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
        gradient_checkpointing=False,
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


def train_dpo(policy_dir: str | Path, reward_model_dir: str | Path, train_path: str | Path, out: str | Path,
              settings: DPOConfig, *, reward_spec: RewardModelSpec | None = None, generation_backend: str = "auto",
              callbacks: list | None = None) -> Path:
    """Build on-policy pairs, train DPO, write ``out/step-<N>/`` and ``out/final/``; return final.

    Under a launcher the main process alone samples, scores and writes the pairs (on its own
    device, before TRL's arguments exist, so nothing of it is ZeRO-partitioned); the other ranks
    wait and read them. Then TRL's arguments, then the policy (see :mod:`rlmt.train.job`).
    """
    from trl import DPOTrainer

    from rlmt.models.loading import load_causal_lm, load_tokenizer

    state = process_state()
    device = rank_device(state)
    out = Path(out)

    def build() -> Path:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.discard_incomplete(out)
        return prepare_pairs(policy_dir, reward_model_dir, train_path, out, settings, reward_spec=reward_spec,
                             backend=generation_backend, device=device)

    pairs_dir = out / PAIRS_DIR
    on_main_then_wait(state, build, done=(pairs_dir / "stats.json").is_file)
    stats = json.loads((pairs_dir / "stats.json").read_text())
    import mlflow

    if mlflow.active_run() is not None:
        from rlmt.tracking import _retry, log_dataset_input, log_outputs

        _retry(mlflow.log_metrics, {f"pairs.{k}": float(v) for k, v in stats["counts"].items()})
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
