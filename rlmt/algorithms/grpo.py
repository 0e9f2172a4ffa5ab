"""GRPO (TRL's trainer, reference settings): its settings block, step count, batch geometry and facts."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from rlmt.algorithms.base import Algorithm, GeometryProblem
from rlmt.algorithms.job_shape import JobShape
from rlmt.algorithms.schedule import Schedule, build_schedule, last_step
from rlmt.algorithms.settings import CheckpointConfig, RolloutConfig, Strict, check_validation


class GRPOConfig(Strict):
    """GRPO with the answer-only reward (PAPER.md §4.2): reference settings, never TRL's defaults."""

    learning_rate: float = 1e-6
    prompts_per_step: int = Field(default=64, ge=1, description="Prompts per rollout (verl's train_batch_size).")
    prompts_per_update: int | None = Field(
        default=None, ge=1, description="Prompts per optimizer update (verl's ppo_mini_batch_size): a rollout of "
        "prompts_per_step makes prompts_per_step / prompts_per_update updates. None: one update per rollout.")
    num_generations: int = 8
    num_train_epochs: float = 2
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    weight_decay: float = 0.01
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = Field(default=0.001, description="KL coefficient (k3 / low_var_kl estimator, as a loss term).")
    entropy_coef: float = Field(default=0.001, description="Entropy bonus where TRL offers it.")
    epsilon: float = Field(default=0.2, description="Clip ratio.")
    loss_type: str = Field(default="dapo", description="Token-mean aggregation over the batch (verl's token-mean).")
    scale_rewards: Literal["group", "batch", "none"] = Field(default="group", description="Divide advantages by the group std.")
    num_iterations: int = Field(default=1, description="PPO epochs per rollout batch.")
    vllm_importance_sampling_correction: bool = Field(
        default=False, description="TRL's importance weight between the vLLM sampler and the trained policy "
        "(TRL's default is on); the reference had none.")
    strict: bool = Field(default=False, description="Score malformed outputs as '[NULL]' (reference: instruct models only).")
    val_prompts: int | None = Field(
        default=None, ge=0, description="Validation prompts (the mixture's val split, first N) sampled "
        "num_generations times and scored at each checkpoint. None: all of them when select_step is "
        "best_val_reward (which reads them), none otherwise; N > 0: the first N at every checkpoint; 0: never.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    checkpoints: CheckpointConfig = Field(default_factory=CheckpointConfig)
    log_samples_every: int = 10
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    seed: int = 0

    @model_validator(mode="after")
    def _update_geometry(self) -> "GRPOConfig":
        if self.prompts_per_update is not None and self.prompts_per_step % self.prompts_per_update:
            raise ValueError(f"prompts_per_step ({self.prompts_per_step}) must be a multiple of prompts_per_update "
                             f"({self.prompts_per_update})")
        check_validation(self.val_prompts, self.checkpoints)
        return self

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer updates per rollout batch (over all num_iterations passes)."""
        return self.num_iterations * self.prompts_per_step // (self.prompts_per_update or self.prompts_per_step)


def _planned_steps(s: GRPOConfig, n_train: int) -> tuple[int, str]:
    """Updates before any early stop, as TRL 1.16 counts them, and how.

    TRL's sampler drops a last, incomplete rollout batch of each epoch (``RepeatSampler``); each
    rollout makes ``updates_per_rollout`` optimizer updates.
    """
    rollouts_per_epoch = n_train // s.prompts_per_step
    total = s.max_steps if s.max_steps > 0 else epoch_updates(s, n_train)
    return total, (f"{n_train} prompts // {s.prompts_per_step} per rollout = {rollouts_per_epoch} rollouts/epoch x "
                   f"{s.updates_per_rollout} updates x {s.num_train_epochs:g} epochs = {total} updates")


def epoch_updates(s: GRPOConfig, n_train: int) -> int:
    """Optimizer updates of the configured epochs over `n_train` prompts, as TRL 1.16 counts them."""
    return math.ceil(s.num_train_epochs * (n_train // s.prompts_per_step) * s.updates_per_rollout)


def total_steps(s: GRPOConfig, n_train: int) -> int:
    """Optimizer updates of the run (TRL's global_step at its end), early stop included."""
    return last_step(_planned_steps(s, n_train)[0], s.checkpoints)


def schedule(s: GRPOConfig, n_train: int) -> Schedule:
    """The Trainer saves every ``save_steps`` updates and at the last one."""
    planned, detail = _planned_steps(s, n_train)
    return build_schedule("grpo", planned, detail, s.checkpoints,
                          rollouts_for=lambda steps: math.ceil(steps / s.updates_per_rollout))


def geometry_problem(s: GRPOConfig, world: int) -> GeometryProblem | None:
    """A rollout's and an update's completions must split into per-device micro-batches over `world` processes."""
    per_update = (s.prompts_per_update or s.prompts_per_step) * s.num_generations
    micro = min(s.per_device_train_batch_size, per_update) * world
    if per_update % micro:
        return ("algorithms.grpo.prompts_per_update", f"{per_update} completions per update are not divisible by "
                f"per_device_train_batch_size x {world}")
    if (s.prompts_per_step * s.num_generations) % micro:
        return ("algorithms.grpo.prompts_per_step", f"{s.prompts_per_step * s.num_generations} completions per "
                f"rollout are not divisible by per_device_train_batch_size x {world}")
    return None


def job_shape(s: GRPOConfig, world: int, n_prompts: int, n_val: int) -> JobShape:
    """TRL's GRPO step on one rank: micro-batches of completions after their prompts, the colocated vLLM engine."""
    per_update = (s.prompts_per_update or s.prompts_per_step) * s.num_generations
    per_device = min(s.per_device_train_batch_size, per_update)
    val = n_val if s.val_prompts is None else min(s.val_prompts, n_val)
    ro = s.rollout
    return JobShape(
        kind="grpo", sequences=per_device, prompt_tokens=ro.max_prompt_length,
        completion_tokens=ro.max_completion_length, micro_batches_per_update=max(per_update // (per_device * world), 1),
        checkpointing=s.gradient_checkpointing, reference=s.beta > 0, entropy=s.entropy_coef > 0,
        rollout_sequences=s.prompts_per_step * s.num_generations // world, updates_per_rollout=s.updates_per_rollout,
        validation_sequences=val * s.num_generations // world,
        vllm=ro.colocated_vllm("algorithms.grpo.rollout"),
        reward_model_in_training=True,
        memory_keys=("algorithms.grpo.per_device_train_batch_size", "algorithms.grpo.gradient_checkpointing",
                     "algorithms.grpo.rollout.vllm_enable_sleep_mode"),
    )


def uses_reference(s: GRPOConfig) -> bool:
    """TRL loads a reference model only for a KL term."""
    return s.beta > 0


ALGORITHM = Algorithm(
    name="grpo", title="GRPO", settings=GRPOConfig,
    supported_sharding=frozenset({"single", "ddp", "zero2", "zero3", "fsdp"}),
    geometry_problem=geometry_problem, total_steps=total_steps, schedule=schedule,
    rollout=True, reward_model_in_training=True, reference_model=uses_reference, validates_on_mixture_val=True,
    job_shape=job_shape,
)
