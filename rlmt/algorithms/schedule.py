"""A run's step schedule from its settings alone: how many optimizer steps, which are saved, how many rollouts.

Shared by the algorithms that know their step count before the run (GRPO, PPO); the rule that ends a
run at its selected step (``checkpoints.stop_at_select_step``) is written here once for all of them.
"""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel, Field


class Schedule(BaseModel):
    """What a cell's training run will do, computed from the config alone (no data, no model)."""

    algo: str
    total_steps: int = Field(description="Optimizer updates (TRL's global_step; PPO: one step per rollout).")
    saved_steps: list[int] = Field(description="Steps with a checkpoint: every save_steps, and the last.")
    rollouts: int = Field(description="Rollout (generation) batches over the run.")
    detail: str


def is_step(rule: Any) -> bool:
    """Whether a ``select_step`` rule names a step (an int; not 'last', 'best_val_reward', nor a bool)."""
    return isinstance(rule, int) and not isinstance(rule, bool)


def last_step(planned: int, checkpoints: Any) -> int:
    """The run's last optimizer step: `planned`, or an earlier selected step where the run stops there.

    `checkpoints` is a settings block's CheckpointConfig: with ``stop_at_select_step`` and an int
    ``select_step`` below `planned`, nothing would evaluate the steps after it, so the run ends there.
    """
    rule = checkpoints.select_step
    if checkpoints.stop_at_select_step and is_step(rule) and rule < planned:
        return rule
    return planned


def build_schedule(algo: str, planned: int, detail: str, checkpoints: Any,
                   rollouts_for: Callable[[int], int]) -> Schedule:
    """The schedule of a run planned for `planned` steps (`detail`: how they were counted).

    The run stops early at its selected step where `checkpoints` says so (see `last_step`); it saves
    every ``save_steps`` steps and at its last; `rollouts_for(steps)` is the rollouts those steps take.
    """
    total = last_step(planned, checkpoints)
    if total < planned:
        detail += f"; stops at select_step {total}"
    every = checkpoints.save_steps
    saved = sorted({*range(every, total + 1, every), total})
    return Schedule(algo=algo, total_steps=total, saved_steps=saved, rollouts=rollouts_for(total), detail=detail)
