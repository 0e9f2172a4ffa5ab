"""Reward scoring throughput: our answer-only, length-bucketed scorer vs one answer at a time and vs
the path a TRL user gets by default.

The same think-format outputs (each thought longer than its answer) are scored three ways with the
same reward model:

- **ours**: :class:`rlmt.rewards.AnswerRewardScorer` (answer extraction, the reward model's own
  template, tokenizing, length buckets under a padded-token budget);
- **one at a time** (old baseline): the same scorer with a micro-batch of 1, as the reference's
  reward worker scored;
- **TRL default** (new baseline): what ``GRPOTrainer`` does with a reward model passed as a reward
  function (``_calculate_rewards`` in trl 1.16): prompt + the *whole* completion, thought included,
  rendered with ``trl.data_utils.apply_chat_template``, tokenized in one call with
  ``padding=True, padding_side="right"``, and scored in one padded batch of every completion
  (``--trl-batch`` splits it into generation batches of that size, in arrival order).

Templating, tokenizing and the forward passes are timed for all three; each path runs ``--repeats``
times in alternating order and the fastest run counts (a shared machine's load only ever slows a
run down). A forward hook on the model counts the tokens it is given, so the padding waste
(pad tokens / real tokens) is measured, not derived. Ours and one-at-a-time must give the same
scores (within 1e-4: different padded batches change float rounding only).

Targets: ours >= 1.5x TRL's default path in answers/s, our padding waste <= 15 %. Exit status 1
when one is missed.

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
TARGET_VS_TRL, TARGET_WASTE, SCORE_TOLERANCE = 1.5, 0.15, 1e-4


def think_outputs(n: int, seed: int, max_words: int) -> tuple[list[list[dict]], list[str]]:
    """`n` warm-think outputs: answers of log-uniform length in [4, `max_words`] words, each thought
    1.5-3x its answer's length (RLMT's thoughts are longer than its answers)."""
    from rlmt.thinking import WARM_THINK, format_output

    rng = random.Random(seed)
    prompts, outputs = [], []
    for _ in range(n):
        k = int(math.exp(rng.uniform(math.log(4), math.log(max_words))))
        question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
        thought = " ".join(rng.choices(WORDS, k=max(k + 1, int(k * rng.uniform(1.5, 3.0)))))
        answer = " ".join(rng.choices(WORDS, k=k))
        prompts.append([{"role": "user", "content": question}])
        outputs.append(format_output(thought, answer, WARM_THINK))
    return prompts, outputs


class TokenCounter:
    """Forward pre-hook: the padded tokens (input_ids' size) and real tokens (attention mask) a model is given."""

    def __init__(self, model) -> None:
        self.padded = self.real = 0
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        self.padded += ids.numel()
        self.real += int(mask.sum()) if mask is not None else ids.numel()

    def reset(self) -> None:
        self.padded = self.real = 0

    @property
    def waste(self) -> float:
        return (self.padded - self.real) / self.real


def trl_default_scores(model, tokenizer, prompts, outputs, batch: int) -> list[float]:
    """GRPOTrainer's reward-model path: whole completions, templated by TRL, one padded batch per generation batch."""
    import torch
    from trl.data_utils import apply_chat_template

    scores: list[float] = []
    for start in range(0, len(outputs), batch):
        texts = [apply_chat_template({"messages": p + [{"role": "assistant", "content": o}]}, tokenizer)["text"]
                 for p, o in zip(prompts[start:start + batch], outputs[start:start + batch])]
        inputs = tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        with torch.inference_mode():
            scores += model(**inputs).logits[:, 0].float().cpu().tolist()
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", type=Path, default=None, help="Reward model directory (default: tiny zoo RM).")
    parser.add_argument("--n", type=int, default=256, help="Answers to score.")
    parser.add_argument("--max-words", type=int, default=200, help="Longest answer, in words (thoughts are longer).")
    parser.add_argument("--max-tokens-per-batch", type=int, default=16384, help="Our padded-token budget per batch.")
    parser.add_argument("--trl-batch", type=int, default=0, help="TRL generation batch (default: all answers in one).")
    parser.add_argument("--repeats", type=int, default=2, help="Runs of each path (alternating); the fastest counts.")
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
    n = args.n
    with tempfile.TemporaryDirectory() as scratch:
        rm_dir = args.reward_model
        if rm_dir is None:
            from rlmt.models.tiny import build_tiny

            rm_dir = build_tiny("reward", Path(scratch) / "reward")
        prompts, outputs = think_outputs(n, args.seed, args.max_words)
        common = dict(device=args.device, dtype=args.dtype)
        ours = AnswerRewardScorer(rm_dir, WARM_THINK, max_tokens_per_batch=args.max_tokens_per_batch, **common)
        single = AnswerRewardScorer(rm_dir, WARM_THINK, max_tokens_per_batch=1, **common)
        counters = {"ours": TokenCounter(ours.model), "one": TokenCounter(single.model)}
        trl_model, trl_tok = single.model, single.tokenizer  # the same weights; counted apart below
        paths = {
            "ours": lambda: ours.score(prompts, outputs).scores,
            "one": lambda: single.score(prompts, outputs).scores,
            "trl": lambda: trl_default_scores(trl_model, trl_tok, prompts, outputs, args.trl_batch or n),
        }
        ours.score(prompts[:4], outputs[:4])  # warm-up
        trl_default_scores(trl_model, trl_tok, prompts[:4], outputs[:4], 4)
        seconds: dict[str, list[float]] = {k: [] for k in paths}
        tokens: dict[str, tuple[int, int]] = {}
        scores: dict[str, list[float]] = {}
        for r in range(args.repeats):
            for name in (list(paths) if r % 2 == 0 else list(paths)[::-1]):
                counter = counters.get(name, counters["one"])
                counter.reset()
                start = time.perf_counter()
                scores[name] = paths[name]()
                seconds[name].append(time.perf_counter() - start)
                tokens[name] = (counter.padded, counter.real)
        lengths = sorted(ours.score(prompts, outputs).input_lengths)

    best = {k: min(v) for k, v in seconds.items()}
    rate = {k: n / best[k] for k in best}
    waste = {k: (p - r) / r for k, (p, r) in tokens.items()}
    diff = max(abs(a - b) for a, b in zip(scores["one"], scores["ours"]))
    vs_one, vs_trl = rate["ours"] / rate["one"], rate["ours"] / rate["trl"]
    print(f"reward model: {rm_dir if args.reward_model else 'tiny:reward'} on {ours.device} "
          f"({next(ours.model.parameters()).dtype}), torch threads {torch.get_num_threads()}")
    print(f"answers: {n}; our reward-input tokens (prompt + answer) min/median/max: "
          f"{lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}; TRL's (prompt + thought + answer): "
          f"{tokens['trl'][1]:,} real tokens in all vs our {tokens['ours'][1]:,}")
    label = {"ours": f"ours (answer only, buckets <= {args.max_tokens_per_batch} tokens)",
             "one": "one at a time (micro-batch 1)",
             "trl": f"TRL default (whole completion, batch {args.trl_batch or n})"}
    for k in ("ours", "one", "trl"):
        print(f"{label[k]:<52} {rate[k]:8.1f} answers/s  best {best[k]:6.2f} s of "
              f"{[round(s, 2) for s in seconds[k]]}  padding waste {100 * waste[k]:5.1f} %")
    print(f"max |score difference| ours vs one at a time: {diff:.2e} (tolerance {SCORE_TOLERANCE:g})")
    print(f"old ratio (ours / one at a time): {vs_one:.2f}x  (old >= 5x target retired)")
    print(f"new ratio (ours / TRL default):   {vs_trl:.2f}x  (target >= {TARGET_VS_TRL}x)")
    print(f"our padding waste: {100 * waste['ours']:.1f} %  (target <= {100 * TARGET_WASTE:.0f} %)")
    ok = vs_trl >= TARGET_VS_TRL and waste["ours"] <= TARGET_WASTE and diff <= SCORE_TOLERANCE
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
