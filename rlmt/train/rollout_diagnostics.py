"""GRPO's per-step diagnostics (:mod:`rlmt.diagnostics`) inside TRL's GRPOTrainer.

TRL calls the reward function once per rollout on every process, with that process's share of the
completions; the reward wrapper (:class:`rlmt.train.grpo.AnswerRewardWithLogging`) hands each
completion's reward, lengths and format to :class:`PendingRollouts`, which gathers every process's
share. :class:`DiagnosticsCallback` then, when the Trainer logs the step, turns them into the
``diag/*`` metrics (with TRL's ``kl`` of the step as ``diag/kl``), logs them to the job's MLflow run
at the step and appends them to the run's rollouts file. Rollouts scored during a validation are
dropped (their logs carry ``eval_`` keys): the diagnostics describe training.

A rollout used by several optimizer updates (``prompts_per_update`` < ``prompts_per_step``) is
recorded once, at the step that generated it; the steps in between log ``diag/kl`` only.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from rlmt.diagnostics import RolloutLog, StepRollouts


@dataclass
class RolloutRow:
    """One completion as the diagnostics see it."""

    reward: float
    answer_tokens: int
    thought_tokens: int
    completion_tokens: int
    ended: bool  # its last token is EOS (or pad): it stopped on its own, not at the length limit
    malformed: bool
    answer_missing: bool


@dataclass
class PendingRollouts:
    """Every process's completions scored since the last log (thread-safe: TRL may call rewards async)."""

    rows: list[RolloutRow] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, rows: list[RolloutRow]) -> None:
        """Add this process's `rows` and every other process's (a collective when a process group exists)."""
        rows = _gathered(rows)
        with self._lock:
            self.rows.extend(rows)

    def take(self) -> list[RolloutRow]:
        with self._lock:
            rows, self.rows = self.rows, []
        return rows


def _gathered(rows: list[RolloutRow]) -> list[RolloutRow]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(rows)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(rows))
    return [row for part in parts for row in part]


def step_rollouts(step: int, rows: list[RolloutRow], max_completion_length: int) -> StepRollouts:
    """The rows as one step's rollouts; clipped = reached `max_completion_length` tokens without ending."""
    return StepRollouts(
        step=step, reward=[r.reward for r in rows], answer_tokens=[r.answer_tokens for r in rows],
        thought_tokens=[r.thought_tokens for r in rows],
        clipped=[r.completion_tokens >= max_completion_length and not r.ended for r in rows],
        malformed=[r.malformed for r in rows], completion_tokens=[r.completion_tokens for r in rows],
        answer_missing=[r.answer_missing for r in rows])


class DiagnosticsCallback(TrainerCallback):
    """Log each training step's ``diag/*`` metrics and append its rollouts to ``<out>/diagnostics/rollouts.jsonl``.

    `fresh`: the run resumes no checkpoint, so an earlier run's rollouts file is emptied when training begins.
    """

    def __init__(self, pending: PendingRollouts, out: str | Path, *, fresh: bool):
        self.pending = pending
        self.log = RolloutLog(out)
        self.fresh = fresh
        self.logged_steps: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.fresh and state.is_world_process_zero:
            self.log.reset()

    def on_log(self, args, state, control, logs=None, **kwargs):
        rows = self.pending.take()  # every rank: no rank keeps rows from a step it will never log
        if not logs or any(k.startswith("eval_") for k in logs) or not state.is_world_process_zero:
            return
        kl = logs.get("kl")
        kl = float(kl) if isinstance(kl, (int, float)) and math.isfinite(kl) else None
        metrics: dict[str, float] = {}
        if rows:
            rollouts = step_rollouts(state.global_step, rows, args.max_completion_length)
            metrics = rollouts.diagnostics(kl)
            self.log.append(rollouts)
            self.logged_steps.append(state.global_step)
        elif kl is not None:
            metrics = {"diag/kl": kl}
        _log_metrics(metrics, state.global_step)


def _log_metrics(metrics: dict[str, float], step: int) -> None:
    import mlflow

    if not metrics or mlflow.active_run() is None:
        return
    from rlmt.tracking import _retry

    _retry(mlflow.log_metrics, metrics, step=step)
