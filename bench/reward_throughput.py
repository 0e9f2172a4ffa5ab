"""Reward scoring throughput: length-bucketed batches vs one answer at a time.

The reference's reward worker scored with a micro-batch of 1. This scores the same answers of
mixed lengths both ways with :class:`rlmt.rewards.AnswerRewardScorer` (extraction, templating,
tokenizing and the forward passes all included), checks that both give the same scores, and
prints answers/s for each and their ratio.

    python bench/reward_throughput.py                       # tiny reward model, 256 answers
    python bench/reward_throughput.py --reward-model PATH   # any one-label reward model
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the answer is a short list of steps first then next because so we can write code for each "
         "item and check it twice before we send the final result to the user who asked").split()


def mixed_length_batch(n: int, seed: int, max_words: int) -> tuple[list[list[dict]], list[str]]:
    """`n` warm-think outputs whose answers have log-uniform lengths between 4 and `max_words` words."""
    from rlmt.thinking import WARM_THINK, format_output

    rng = random.Random(seed)
    prompts, outputs = [], []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(4), math.log(max_words))))
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        thought = " ".join(rng.choices(WORDS, k=rng.randint(10, 80)))
        answer = " ".join(rng.choices(WORDS, k=k))
        prompts.append([{"role": "user", "content": question}])
        outputs.append(format_output(thought, answer, WARM_THINK))
    return prompts, outputs


def timed(scorer, prompts, outputs):
    start = time.perf_counter()
    batch = scorer.score(prompts, outputs, progress=True)
    return time.perf_counter() - start, batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", type=Path, default=None, help="Reward model directory (default: tiny zoo RM).")
    parser.add_argument("--n", type=int, default=256, help="Answers to score.")
    parser.add_argument("--max-words", type=int, default=400, help="Longest answer, in words.")
    parser.add_argument("--max-tokens-per-batch", type=int, default=16384, help="Padded-token budget per batch.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from rlmt.rewards import AnswerRewardScorer
    from rlmt.thinking import WARM_THINK

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        rm_dir = args.reward_model
        if rm_dir is None:
            from rlmt.models.tiny import build_tiny

            rm_dir = build_tiny("reward", Path(scratch) / "reward")
        prompts, outputs = mixed_length_batch(args.n, args.seed, args.max_words)
        common = dict(device=args.device, dtype=args.dtype)
        batched = AnswerRewardScorer(rm_dir, WARM_THINK, max_tokens_per_batch=args.max_tokens_per_batch, **common)
        single = AnswerRewardScorer(rm_dir, WARM_THINK, max_tokens_per_batch=1, **common)
        batched.score(prompts[:4], outputs[:4])  # warm-up
        single.score(prompts[:4], outputs[:4])

        t_single, b_single = timed(single, prompts, outputs)
        t_batched, b_batched = timed(batched, prompts, outputs)

    diff = max(abs(a - b) for a, b in zip(b_single.scores, b_batched.scores))
    lengths = sorted(b_batched.input_lengths)
    print(f"reward model: {rm_dir if args.reward_model else 'tiny:reward'} on {batched.device} "
          f"({next(batched.model.parameters()).dtype}), torch threads {torch.get_num_threads()}")
    print(f"answers: {args.n}, reward-input tokens min/median/max: "
          f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}")
    print(f"one at a time (micro-batch 1):   {args.n / t_single:8.1f} answers/s  ({t_single:.2f} s)")
    print(f"length-bucketed (budget {args.max_tokens_per_batch}): {args.n / t_batched:8.1f} answers/s  ({t_batched:.2f} s)")
    print(f"max |score difference|: {diff:.2e}")
    print(f"ratio (bucketed / one at a time): {t_single / t_batched:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
