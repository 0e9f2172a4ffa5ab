"""On-policy DPO (TRL's trainer): its settings block, batch geometry and facts.

Pairs are sampled from the initial policy and scored by the reward model before training, so the
training job holds no reward model, and its step count depends on the pairs that survive the filters.
"""

from __future__ import annotations

from pydantic import Field

import math

from rlmt.algorithms.base import Algorithm, GeometryProblem, global_batch_problem
from rlmt.algorithms.job_shape import JobShape
from rlmt.algorithms.settings import CheckpointConfig, RolloutConfig, Strict


class DPOConfig(Strict):
    """On-policy DPO (PAPER.md §4.4): pairs sampled from the initial policy, scored answer-only."""

    samples_per_prompt: int = 8
    min_parsable: int = 4
    max_pair_tokens: int = 8192
    val_fraction: float = 0.03
    beta: float = 0.1
    learning_rate: float = 3e-7
    num_train_epochs: float = 2
    max_steps: int = -1
    global_batch_size: int = 128
    per_device_train_batch_size: int = 1
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_length: int = 4096
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations in the backward pass "
                                         "(chosen and rejected of 4,096 tokens each: ~60 GiB of activations per GPU "
                                         "for an 8B model without it, ~3.5 GiB with it).")
    strict: bool = False
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    checkpoints: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(save_steps=100))
    bf16: bool | None = None
    seed: int = 42


def geometry_problem(s: DPOConfig, world: int) -> GeometryProblem | None:
    """The global batch splits into per-device batches over `world` processes (with gradient accumulation)."""
    return global_batch_problem("dpo", s, world)


def job_shape(s: DPOConfig, world: int, n_prompts: int, n_val: int) -> JobShape:
    """TRL's DPO step on one rank (chosen and rejected stacked), and the pair sampling before it (every rank samples
    its share of the prompts). Updates: at most one pair per prompt survives, less the validation split."""
    per_device = s.per_device_train_batch_size
    pairs = math.floor(n_prompts * (1 - s.val_fraction))
    global_batch = min(s.global_batch_size, max(pairs // per_device, 1) * per_device)
    return JobShape(
        kind="dpo", sequences=2 * per_device, prompt_tokens=0, completion_tokens=s.max_length,
        micro_batches_per_update=max(global_batch // (per_device * world), 1), checkpointing=s.gradient_checkpointing,
        reference=True, sampling_sequences=-(-n_prompts * s.samples_per_prompt // world),
        sampling_prompt_tokens=s.rollout.max_prompt_length, sampling_completion_tokens=s.rollout.max_completion_length,
        updates_upper_bound=math.ceil(s.num_train_epochs * pairs / global_batch),
        memory_keys=("algorithms.dpo.gradient_checkpointing", "algorithms.dpo.max_length"),
    )


def uses_reference(s: DPOConfig) -> bool:
    """DPO's loss compares with the reference policy whatever its settings."""
    return True


ALGORITHM = Algorithm(
    name="dpo", title="DPO", settings=DPOConfig,
    supported_sharding=frozenset({"single", "ddp", "zero2", "zero3", "fsdp"}),
    geometry_problem=geometry_problem, reference_model=uses_reference, job_shape=job_shape,
    steps_known_after="the pairs that survive the filters",
)
