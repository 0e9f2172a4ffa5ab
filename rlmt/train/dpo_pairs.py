"""On-policy DPO pairs (PAPER.md §4.4), built as the reference ``build_dpo_dataset.py`` does, in one round:

1. sample ``samples_per_prompt`` (8) responses per training prompt from the *initial* policy
   (the generation API, resumable), temperature 0.7;
2. score each *answer* with the cell's reward (the same :class:`~rlmt.rewards.AnswerReward` GRPO
   and PPO use; the thought is never scored);
3. keep prompts with at least ``min_parsable`` (4) responses whose answer was found;
4. chosen = the highest-scoring parsable response, rejected = the lowest (a prompt whose
   parsable responses all score the same has no preference and is dropped, counted as ``tied``);
5. drop pairs whose prompt + longer response exceed ``max_pair_tokens`` (8192);
6. split 97/3 into train/validation with seed 42.

The chosen/rejected texts are the raw responses the policy wrote (thought included), which is
what DPO must raise or lower the likelihood of.

Every process of the job does steps 1-2 for its share of the prompts (``rows[rank::world]``, on
its own GPU), into ``OUT/dpo_samples.parts/rank-<r>-of-<w>.jsonl`` (resumable) and then
``...scored.jsonl`` (the same rows with their ``reward``, written whole once scored). The main
process merges the shares into ``OUT/dpo_samples.jsonl`` in the prompt file's order (then sample
index) and does steps 3-6 once. A prompt's samples depend on the sampling seed and the prompt alone
(:mod:`rlmt.generation`: a random stream per row, or per vLLM request), so the merged file and the
pairs are the same on any number of processes. Between sampling and scoring the generation engine is
shut down and the CUDA cache emptied (:meth:`rlmt.generation.Generator.close`), so the reward (a
:class:`~rlmt.rewards.NamedReward`, built only then) loads onto a free GPU.

Pairs and counts are saved beside the checkpoints (``OUT/pairs/{train,val}.parquet``,
``OUT/pairs/stats.json``); a rerun reuses them, so a resumed run trains on exactly the same pairs.
"""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from rlmt.config import DPOConfig
from rlmt.diagnostics import record_dpo_pairs
from rlmt.jsonl import write_json_lines
from rlmt.thinking import ThinkingFormat
from rlmt.train.job import cell_reward, on_main_then_wait, process_state, wait_until
from rlmt.train.runtime import TrainingSetupError, prompt_tokens, read_prompt_table

PAIRS_DIR = "pairs"
SAMPLES_FILE = "dpo_samples.jsonl"
SHARDING_FILE = "dpo_samples.sharding.json"
PARTS_DIR = "dpo_samples.parts"


# ----------------------------------------------------------------------------- sampling and scoring, per process


def sample_responses(policy_dir: str | Path, rows: list[dict], out_jsonl: Path, settings: DPOConfig, *,
                     backend: str = "auto", device: str = "auto", batch_size: int = 16) -> list[dict]:
    """`samples_per_prompt` responses per prompt from the policy (resumable generations file).

    The generator is built here and closed before this returns (vLLM's engine shut down, the CUDA
    cache emptied).
    """
    from rlmt.generation import SamplingParams, generate_file, read_generations

    fmt = ThinkingFormat.load(policy_dir)
    params = SamplingParams(temperature=settings.rollout.temperature, top_p=settings.rollout.top_p,
                            max_new_tokens=settings.rollout.max_completion_length, n=settings.samples_per_prompt,
                            seed=settings.seed, stop=tuple(fmt.stop_strings))
    generate_file(policy_dir, [(str(r["id"]), r["messages"]) for r in rows], out_jsonl, params, backend=backend,
                  device=device, batch_size=batch_size)
    return read_generations(out_jsonl)


def part_path(out: Path, rank: int, world: int) -> Path:
    """Where process `rank` of `world` samples its share (a world size of its own: a rerun on another
    number of processes samples afresh instead of mixing two splits of the prompts)."""
    return out / PARTS_DIR / f"rank-{rank:03d}-of-{world:03d}.jsonl"


def scored_path(part: Path) -> Path:
    return part.with_name(part.stem + ".scored.jsonl")


def sample_and_score_share(policy_dir: str | Path, reward: Any, rows: list[dict], out: Path,
                           settings: DPOConfig, *, rank: int, world: int, backend: str = "auto",
                           device: str = "auto") -> Path:
    """Process `rank`'s share of the prompts (``rows[rank::world]``) sampled, then scored; its scored file.

    `reward` is built on this process's device once the sampler is closed (:func:`rlmt.train.job.cell_reward`:
    a NamedReward, a classifier dir, or an AnswerReward built already); each sample's prompt row ``id``
    reaches it as extras.
    """
    part = part_path(out, rank, world)
    scored = scored_path(part)
    if scored.is_file():
        return scored
    part.parent.mkdir(parents=True, exist_ok=True)
    generations = sample_responses(policy_dir, rows[rank::world], part, settings, backend=backend, device=device)
    check_samples_per_prompt(generations, settings.samples_per_prompt, part)
    scorer = cell_reward(reward, ThinkingFormat.load(policy_dir), strict=settings.strict, device=device)
    extras = {str(r["id"]): {k: v for k, v in r.items() if k != "messages"} for r in rows[rank::world]}
    batch = scorer.score([g["prompt"] for g in generations], [g["output"] for g in generations],
                         [extras[str(g["id"])] for g in generations], progress=rank == 0)
    if scorer is not reward:  # built here: release its model before training (one given ready-built is the caller's)
        scorer.close()
    del scorer
    _free_accelerator_memory()
    write_json_lines(scored, [{**g, "reward": float(s)} for g, s in zip(generations, batch.scores)])
    return scored


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- merging, on the main process


def merge_shares(rows: list[dict], scored_files: list[Path], n: int) -> list[dict]:
    """Every process's scored samples, in the prompt file's order and then by sample index.

    The order does not depend on how the prompts were split, so one process and eight give the same
    list. Every prompt must have exactly `n` samples.
    """
    by_id: dict[str, list[dict]] = {}
    for path in scored_files:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_id.setdefault(str(row["id"]), []).append(row)
    merged: list[dict] = []
    for r in rows:
        samples = sorted(by_id.pop(str(r["id"]), []), key=lambda g: g["sample"])
        if len(samples) != n:
            raise TrainingSetupError(f"prompt {r['id']!r} has {len(samples)} scored samples, expected "
                                     f"samples_per_prompt={n} ({', '.join(map(str, scored_files))})")
        merged.extend(samples)
    if by_id:
        raise TrainingSetupError(f"scored samples of {len(by_id)} prompt(s) not in the prompt file "
                                 f"(e.g. {next(iter(by_id))!r}): the samples belong to another prompt file")
    return merged


def merged_samples(rows: list[dict], out: Path, world: int, n: int, *, poll_s: float = 1.0) -> list[dict]:
    """``OUT/dpo_samples.jsonl``: merged once every process's scored share is on disk (the main process).

    Written atomically with its sharding record (``dpo_samples.sharding.json``); the shares are then removed.
    """
    from rlmt.generation import read_generations

    merged = out / SAMPLES_FILE
    if not merged.is_file():
        scored = [scored_path(part_path(out, r, world)) for r in range(world)]
        wait_until(lambda: all(p.is_file() for p in scored), poll_s=poll_s)
        samples = merge_shares(rows, scored, n)
        shares = [len(rows[r::world]) for r in range(world)]
        (out / SHARDING_FILE).write_text(json.dumps({"processes": world, "prompts_per_process": shares}) + "\n")
        write_json_lines(merged, samples)
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    samples = read_generations(merged)
    counts = Counter(str(g["id"]) for g in samples)
    missing = [str(r["id"]) for r in rows if counts.get(str(r["id"])) != n]
    if missing or len(counts) != len(rows):
        raise TrainingSetupError(f"{merged}: {len(missing)} prompt(s) without exactly samples_per_prompt={n} samples "
                                 f"(e.g. {missing[:3]}) or samples of other prompts; delete it to sample again")
    return samples


# ----------------------------------------------------------------------------- pairs


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


def check_samples_per_prompt(generations: list[dict], n: int, path: Path) -> None:
    """Every prompt has exactly `n` samples ("best vs worst of 8" must not become "of 16")."""
    counts = Counter(str(g["id"]) for g in generations)
    wrong = {rid: c for rid, c in counts.items() if c != n}
    if wrong:
        shown = ", ".join(f"{rid!r}: {c}" for rid, c in list(wrong.items())[:5])
        raise TrainingSetupError(f"{path}: {len(wrong)} prompt(s) do not have exactly samples_per_prompt={n} "
                                 f"samples ({shown}); delete the file to sample again")


def write_pairs(samples: list[dict], policy_dir: str | Path, out: Path, settings: DPOConfig) -> Path:
    """Steps 3-6 on the merged scored samples: ``out/pairs/{train,val}.parquet`` + stats.json, atomically."""
    import polars as pl

    from rlmt.models.loading import load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    pairs, counts = build_pairs(samples, [g["reward"] for g in samples], tokenizer, settings)
    if len(pairs) < 2:
        raise TrainingSetupError(f"only {len(pairs)} DPO pair(s) survived the filters ({dict(counts)}); "
                                 "more prompts or samples_per_prompt are needed")
    train, val = split_pairs(pairs, settings.val_fraction, seed=42)
    counts["train"], counts["val"] = len(train), len(val)
    sharding_file = out / SHARDING_FILE
    sharding = json.loads(sharding_file.read_text()) if sharding_file.is_file() else None
    stats = {"counts": dict(counts), "malformed_fraction": sum(not g["well_formed"] for g in samples) / len(samples),
             "sampling": sharding,
             # the samples' diag/* metrics, the pairs' answer lengths and the length verdict (rlmt.diagnostics);
             # the samples are written as step 0 of OUT/diagnostics/rollouts.jsonl, the verdict beside it
             "diagnostics": record_dpo_pairs(out, samples, pairs, lambda texts: [
                 len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else [])}
    pairs_dir = out / PAIRS_DIR
    tmp = out / f"{PAIRS_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pl.DataFrame(train).write_parquet(tmp / "train.parquet")
    pl.DataFrame(val if val else [], schema=pl.DataFrame(train).schema).write_parquet(tmp / "val.parquet")
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    tmp.rename(pairs_dir)
    return pairs_dir


def prepare_pairs(policy_dir: str | Path, reward: Any, train_path: str | Path, out: Path,
                  settings: DPOConfig, *, backend: str = "auto", device: str = "auto", state=None) -> Path:
    """Sample and score this process's share, then (main process) merge and pair; ``out/pairs`` (reused when present).

    Every process of the job calls it (`state`: accelerate's process state; default: this process's).
    The others wait, polling, until the main process has written the pairs: sampling takes hours,
    longer than a collective's timeout.
    """
    state = state or process_state()
    out = Path(out)
    pairs_dir = out / PAIRS_DIR
    if (pairs_dir / "stats.json").is_file():
        return pairs_dir
    rows = read_prompt_table(train_path)
    world, n = state.num_processes, settings.samples_per_prompt
    if not (out / SAMPLES_FILE).is_file():
        sample_and_score_share(policy_dir, reward, rows, out, settings, rank=state.process_index,
                               world=world, backend=backend, device=device)
    on_main_then_wait(state, lambda: write_pairs(merged_samples(rows, out, world, n), policy_dir, out, settings),
                      done=(pairs_dir / "stats.json").is_file, poll_s=1.0)
    return pairs_dir
