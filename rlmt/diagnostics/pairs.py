"""DPO's diagnostics: its scored samples as one step of rollouts, its pairs' lengths, its verdict.

DPO trains on pairs built once from the initial policy's samples (:mod:`rlmt.train.dpo_pairs`), so
there is no step-by-step rise to explain. What can push it towards length is in the pairs: if the
chosen answer is usually the longer one, DPO is taught to write longer. The samples are written as
step 0 of the rollouts file (the report's reward-against-length scatter), the pairs' lengths become
``diag/pairs_*`` metrics, and the verdict follows :data:`rlmt.diagnostics.verdict.DPO_RULE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from rlmt.diagnostics.records import RolloutLog, StepRollouts
from rlmt.diagnostics.step import pair_diagnostics
from rlmt.diagnostics.verdict import pair_verdict, save_verdict


def record_dpo_pairs(run_dir: str | Path, samples: Sequence[dict], pairs: Sequence[dict],
                     count_tokens: Callable[[list[str]], list[int]]) -> dict:
    """Write the samples as step 0 and the pairs' verdict into `run_dir`; return ``{"metrics", "verdict"}``.

    `samples`: the scored generation rows (``id``, ``output``, ``answer``, ``thought``, ``well_formed``,
    ``answer_found``, ``finish_reason``, ``n_tokens``, ``reward``); `pairs`: rows with ``id`` and the
    chosen and rejected outputs as one assistant message each; `count_tokens`: texts -> policy tokens.
    """
    answers = count_tokens([str(s.get("answer") or "") for s in samples])
    thoughts = count_tokens([str(s.get("thought") or "") for s in samples])
    known_length = all(s.get("n_tokens") is not None for s in samples)
    rollouts = StepRollouts(
        step=0, reward=[float(s["reward"]) for s in samples], answer_tokens=answers, thought_tokens=thoughts,
        clipped=[s.get("finish_reason") == "length" for s in samples],
        malformed=[not s.get("well_formed", True) for s in samples],
        completion_tokens=[int(s["n_tokens"]) for s in samples] if known_length else None,
        answer_missing=[not s.get("answer_found", True) for s in samples])
    RolloutLog(run_dir).write([rollouts])
    tokens_of = {(str(s["id"]), s["output"]): t for s, t in zip(samples, answers)}
    chosen = [tokens_of[(str(p["id"]), p["chosen"][-1]["content"])] for p in pairs]
    rejected = [tokens_of[(str(p["id"]), p["rejected"][-1]["content"])] for p in pairs]
    verdict = pair_verdict(chosen, rejected)
    save_verdict(run_dir, verdict)
    metrics = {**(rollouts.diagnostics() if len(rollouts) else {}), **pair_diagnostics(chosen, rejected)}
    return {"metrics": metrics, "verdict": verdict.label}
