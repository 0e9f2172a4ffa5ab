"""What the registry knows of one training algorithm: a small description, filled in by the algorithm's module.

The config, the preflight, the CLI, the report and the trainers ask this description instead of
branching on an algorithm's name, so a fact about an algorithm (its step count, its batch geometry,
the sharding it runs under, the models it holds) is written once, in the algorithm's own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from rlmt.algorithms.job_shape import JobShape
from rlmt.algorithms.schedule import Schedule, is_step

GeometryProblem = tuple[str, str]  # (the config key to change, why the batch does not divide)


def global_batch_problem(algo: str, settings: Any, world: int) -> GeometryProblem | None:
    """For TRL's trainers with a global batch: it splits into per-device batches over `world` processes (with
    gradient accumulation)."""
    if settings.global_batch_size % (settings.per_device_train_batch_size * world):
        return (f"algorithms.{algo}.global_batch_size", f"{settings.global_batch_size} is not divisible by "
                f"per_device_train_batch_size {settings.per_device_train_batch_size} x {world}")
    return None


def never(settings: Any) -> bool:
    """For a fact an algorithm never has, whatever its settings (e.g. SFT's reference model)."""
    return False


def no_step_count(settings: Any, n_train: int) -> None:
    """For an algorithm whose step count is known only when its run has its data."""
    return None


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm, as every stage outside its trainer needs to know it.

    The functions take the algorithm's settings block (an instance of `settings`, with the cell's
    overrides applied) and read nothing else, so each is testable on a settings object alone.
    """

    name: str  # the config's key: algorithms.<name>, overrides[i].<name>, a grid cell's algo
    title: str  # how tables and messages name it: "GRPO"
    settings: type[BaseModel]  # the settings block's class
    supported_sharding: frozenset[str]  # 'single', 'ddp', 'zero2', 'zero3', 'fsdp' (FSDP1 or 2), 'fsdp2' (2 only)
    geometry_problem: Callable[[Any, int], GeometryProblem | None]  # (settings, processes): a batch that cannot split
    total_steps: Callable[[Any, int], int | None] = no_step_count  # (settings, n_train): optimizer steps of the run
    schedule: Callable[[Any, int], Schedule | None] = no_step_count  # (settings, n_train): steps, saves, rollouts
    trains_cell: bool = True  # a grid cell's algo (SFT: the warm-start stage before it, run once per policy)
    rollout: bool = False  # samples from the policy it trains, during training (GRPO, PPO)
    critic: bool = False  # trains a value model beside the policy (PPO)
    reward_model_in_training: bool = False  # the reward model is loaded by the training job and scores rollouts
    reference_model: Callable[[Any], bool] = never  # (settings): holds a frozen copy of the initial policy
    validates_on_mixture_val: bool = False  # scores the mixture's val split at each checkpoint (DPO: its pairs' split)
    steps_known_after: str | None = None  # what the step count waits for, when no config alone gives it (DPO)
    # (settings, processes, prompts, val prompts) -> one rank's work per update, for the preflight's trace and clock;
    # prompts: the training prompts (SFT: examples), val prompts: the mixture's val split
    job_shape: Callable[[Any, int, int, int], JobShape] | None = None

    def supports(self, sharding: str) -> bool:
        """Whether the trainer runs under this launcher/sharding; 'fsdp' covers FSDP2 as well."""
        allowed = self.supported_sharding
        return sharding in allowed or (sharding == "fsdp2" and "fsdp" in allowed)

    @property
    def stage_label(self) -> str:
        """The report's stage column for a policy this algorithm trained: '+ GRPO'."""
        return f"+ {self.title}"

    def select_step_problem(self, settings: Any, n_train: int | None) -> str | None:
        """Why ``checkpoints.select_step`` (an int) can never be selected at the end of the run, or None.

        `n_train`: the training prompts (None: unknown, so only a step count that no config gives is a
        problem). The message starts with the step; the caller prefixes the cell and the key.
        """
        if not self.trains_cell:
            return None
        rule = settings.checkpoints.select_step
        if not is_step(rule):
            return None
        if self.steps_known_after:
            return (f"{rule}: {self.title}'s number of steps depends on {self.steps_known_after}, so a fixed step "
                    "may never exist; use 'last' or 'best_val_reward'")
        sched = self.schedule(settings, n_train) if n_train is not None else None
        if sched is None or rule in sched.saved_steps:
            return None
        return f"{rule} is never saved: the run saves steps {sched.saved_steps} ({sched.detail})"
