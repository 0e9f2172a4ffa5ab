"""One step's rollouts as the ``diag/*`` metrics: the vocabulary every trainer logs.

GRPO logs them from its reward wrapper's rollouts (all processes' rollouts of the step), PPO from
each step's gathered rollouts, DPO once (step 0) over the samples its pairs are built from. Lengths
are counted in the policy's tokens; "answer" is what the reward scored (the extracted answer), the
"thought" what came before it.
"""

from __future__ import annotations

import math
from typing import Sequence

from rlmt.stats.correlation import pearson, spearman

PREFIX = "diag/"

METRICS: dict[str, str] = {
    "diag/rollouts": "rollouts in the step (all processes)",
    "diag/reward_mean": "mean reward of the step's rollouts",
    "diag/reward_std": "their standard deviation (n - 1 in the denominator; 0 for one rollout)",
    "diag/answer_tokens_mean": "mean answer length (the extracted answer the reward scored), policy tokens",
    "diag/thought_tokens_mean": "mean thought length (0 for a no-think policy), policy tokens",
    "diag/completion_tokens_mean": "mean length of the whole generated output, policy tokens (where known)",
    "diag/clipped_share": "share of rollouts cut at the length limit (max_completion_length) before they ended",
    "diag/malformed_share": "share of rollouts that break the thinking format (rlmt.thinking.extract)",
    "diag/answer_missing_share": "share of rollouts with no answer found (where known)",
    "diag/kl": "KL of the policy to the reference (initial) policy: TRL's k3 estimate for GRPO, the sampled "
               "log-ratio per token for PPO (absent without a KL term)",
    "diag/reward_length_pearson": "Pearson's r of reward and answer tokens over the step's rollouts "
                                  "(absent when either is constant)",
    "diag/reward_length_spearman": "Spearman's rho of the same (ties share their mean rank; absent likewise)",
    "diag/pairs": "DPO: pairs built",
    "diag/pairs_chosen_longer_share": "DPO: share of pairs (ties in length left out) whose chosen answer is longer",
    "diag/pairs_answer_tokens_delta_mean": "DPO: mean of chosen minus rejected answer tokens over the pairs",
}


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1), 0 for a single value."""
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (len(values) - 1))


def step_diagnostics(rewards: Sequence[float], answer_tokens: Sequence[int], thought_tokens: Sequence[int],
                     clipped: Sequence[bool], malformed: Sequence[bool], kl: float | None = None, *,
                     completion_tokens: Sequence[int] | None = None,
                     answer_missing: Sequence[bool] | None = None) -> dict[str, float]:
    """The ``diag/*`` metrics of one step's rollouts (one entry per rollout in every list, same order).

    `kl`: the step's KL to the reference, when the trainer has one. A correlation that is undefined
    (fewer than two rollouts, or a constant reward or length) is left out rather than logged as NaN;
    so are the optional metrics whose inputs are not given.
    """
    n = len(rewards)
    if n == 0:
        raise ValueError("step_diagnostics needs at least one rollout")
    lists = {"answer_tokens": answer_tokens, "thought_tokens": thought_tokens, "clipped": clipped,
             "malformed": malformed, "completion_tokens": completion_tokens, "answer_missing": answer_missing}
    wrong = {k: len(v) for k, v in lists.items() if v is not None and len(v) != n}
    if wrong:
        raise ValueError(f"step_diagnostics got {n} rewards but {wrong}")
    rewards = [float(r) for r in rewards]
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError("a reward is NaN or infinite")
    out = {
        "diag/rollouts": float(n),
        "diag/reward_mean": _mean(rewards),
        "diag/reward_std": _std(rewards),
        "diag/answer_tokens_mean": _mean([float(t) for t in answer_tokens]),
        "diag/thought_tokens_mean": _mean([float(t) for t in thought_tokens]),
        "diag/clipped_share": sum(bool(c) for c in clipped) / n,
        "diag/malformed_share": sum(bool(m) for m in malformed) / n,
    }
    if completion_tokens is not None:
        out["diag/completion_tokens_mean"] = _mean([float(t) for t in completion_tokens])
    if answer_missing is not None:
        out["diag/answer_missing_share"] = sum(bool(m) for m in answer_missing) / n
    if kl is not None and math.isfinite(float(kl)):
        out["diag/kl"] = float(kl)
    lengths = [float(t) for t in answer_tokens]
    for name, corr in (("pearson", pearson), ("spearman", spearman)):
        value = corr(rewards, lengths) if n >= 2 else None
        if value is not None:
            out[f"diag/reward_length_{name}"] = value
    return out


def pair_diagnostics(chosen_answer_tokens: Sequence[int], rejected_answer_tokens: Sequence[int]) -> dict[str, float]:
    """DPO's pairs: how many, how often the chosen answer is the longer one, by how much on average.

    The longer-share leaves pairs of equal length out (it is absent when every pair ties or there
    are none); the mean difference is chosen minus rejected over all pairs.
    """
    if len(chosen_answer_tokens) != len(rejected_answer_tokens):
        raise ValueError(f"{len(chosen_answer_tokens)} chosen but {len(rejected_answer_tokens)} rejected lengths")
    n = len(chosen_answer_tokens)
    out = {"diag/pairs": float(n)}
    if n == 0:
        return out
    deltas = [float(c) - float(r) for c, r in zip(chosen_answer_tokens, rejected_answer_tokens)]
    out["diag/pairs_answer_tokens_delta_mean"] = _mean(deltas)
    untied = [d for d in deltas if d != 0]
    if untied:
        out["diag/pairs_chosen_longer_share"] = sum(d > 0 for d in untied) / len(untied)
    return out
