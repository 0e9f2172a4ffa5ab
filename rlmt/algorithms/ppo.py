"""Actor-critic PPO (rlmt's own loop): its settings block, step count, batch geometry and facts."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from rlmt.algorithms.base import Algorithm, GeometryProblem
from rlmt.algorithms.job_shape import JobShape
from rlmt.algorithms.schedule import Schedule, build_schedule, last_step
from rlmt.algorithms.settings import CheckpointConfig, RolloutConfig, Strict, check_validation


class PPOConfig(Strict):
    """Actor-critic PPO with GAE (PAPER.md §4.3); names follow the reference configs."""

    learning_rate: float = 1e-6
    critic_lr: float = 1e-5
    prompts_per_step: int = 64
    mini_batch_size: int = 16
    ppo_epochs: int = 1
    num_train_epochs: float = 2
    max_steps: int = -1
    clip_ratio: float = 0.2
    cliprange_value: float = 0.5
    gamma: float = 1.0
    lam: float = 1.0
    kl_coef: float = Field(default=0.0, description="Per-token KL penalty in the reward (reference configs: none).")
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    critic: Literal["value-head", "token-classification"] = Field(
        default="value-head", description="Critic initialised from the policy: its body plus a zero-initialised "
        "linear value head, or a one-label AutoModelForTokenClassification (verl's critic).")
    micro_batch_size: int = Field(default=16, ge=1, description="Sequences per forward/backward pass on one device "
                                  "(the reference's micro-batch 16 per GPU); gradients accumulate over a mini-batch.")
    generation_batch_size: int = Field(default=64, ge=1, description="Prompts per generate() call in a rollout.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute actor and critic activations in the "
                                         "backward pass (verl's enable_gradient_checkpointing).")
    logprob_chunk_tokens: int = Field(default=1024, ge=1, description="Response positions per log-softmax piece "
                                      "when the rollout's old (and reference) log-probs are computed: the full "
                                      "vocabulary's fp32 logits never exist for a whole batch at once.")
    process_group_timeout_min: float = Field(default=60, gt=0, description="Collective timeout of the job's process "
                                             "group (NCCL's default watchdog is 10 minutes).")
    val_prompts: int | None = Field(default=64, ge=0, description="Validation prompts scored at each checkpoint "
                                    "(for select_step: best_val_reward); None: all; 0: no validation.")
    strict: bool = False
    rollout: RolloutConfig = Field(default_factory=lambda: RolloutConfig(max_prompt_length=896))
    checkpoints: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(save_steps=55))
    log_samples_every: int = 10
    bf16: bool | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _validation(self) -> "PPOConfig":
        check_validation(self.val_prompts, self.checkpoints)
        return self

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer updates per rollout: one per mini-batch, ppo_epochs passes."""
        return self.ppo_epochs * max(self.prompts_per_step // self.mini_batch_size, 1)


def _planned_steps(s: PPOConfig, n_train: int) -> tuple[int, str]:
    """Steps before any early stop: one per rollout of ``prompts_per_step`` prompts over the prompt stream."""
    total = s.max_steps if s.max_steps > 0 else max(1, math.ceil(s.num_train_epochs * n_train / s.prompts_per_step))
    return total, f"ceil({s.num_train_epochs:g} epochs x {n_train} prompts / {s.prompts_per_step} per step) = {total} steps"


def total_steps(s: PPOConfig, n_train: int) -> int:
    """Steps of the run (one rollout and one update phase each), early stop included."""
    return last_step(_planned_steps(s, n_train)[0], s.checkpoints)


def schedule(s: PPOConfig, n_train: int) -> Schedule:
    """rlmt's loop saves every ``save_steps`` steps and at the last one."""
    planned, detail = _planned_steps(s, n_train)
    return build_schedule("ppo", planned, detail, s.checkpoints, rollouts_for=lambda steps: steps)


def geometry_problem(s: PPOConfig, world: int) -> GeometryProblem | None:
    """A step's prompts and each mini-batch split evenly over `world` processes; one response per prompt, so a
    mini-batch cannot be larger than the step's batch."""
    if s.prompts_per_step % world or s.mini_batch_size % world:
        return ("algorithms.ppo.mini_batch_size", f"prompts_per_step ({s.prompts_per_step}) and mini_batch_size "
                f"({s.mini_batch_size}) must be divisible by the number of processes ({world})")
    if s.mini_batch_size > s.prompts_per_step:
        return ("algorithms.ppo.mini_batch_size", f"mini_batch_size ({s.mini_batch_size}) exceeds prompts_per_step "
                f"({s.prompts_per_step}): one response per prompt makes a step's batch")
    return None


def job_shape(s: PPOConfig, world: int, n_prompts: int, n_val: int) -> JobShape:
    """rlmt's PPO step on one rank: actor and critic forward/backward per micro-batch of a mini-batch; the rollout's
    old (and reference) log-probs ``micro_batch_size`` rows and ``logprob_chunk_tokens`` positions at a time."""
    mini = max(s.mini_batch_size // world, 1)
    micro = min(s.micro_batch_size, mini)
    ro = s.rollout
    val = n_val if s.val_prompts is None else min(s.val_prompts, n_val)
    return JobShape(
        kind="ppo", sequences=micro, prompt_tokens=ro.max_prompt_length, completion_tokens=ro.max_completion_length,
        micro_batches_per_update=max(mini // micro, 1), checkpointing=s.gradient_checkpointing,
        reference=s.kl_coef > 0, critic=s.critic, entropy=s.entropy_coef > 0,
        logprob_rows=micro, logprob_chunk_tokens=s.logprob_chunk_tokens,
        rollout_sequences=s.prompts_per_step // world, updates_per_rollout=s.updates_per_rollout,
        validation_sequences=-(-val // world),
        vllm=ro.colocated_vllm("algorithms.ppo.rollout"),
        reward_model_in_training=True, frees_grads=True,  # ppo_update: optimizer.zero_grad(set_to_none=True)
        memory_keys=("algorithms.ppo.micro_batch_size", "algorithms.ppo.gradient_checkpointing",
                     "algorithms.ppo.logprob_chunk_tokens"),
    )


def uses_reference(s: PPOConfig) -> bool:
    """The KL penalty in the reward compares with the initial policy."""
    return s.kl_coef > 0


ALGORITHM = Algorithm(
    name="ppo", title="PPO", settings=PPOConfig,
    # plain torch semantics under FSDP2, no DeepSpeed engine
    supported_sharding=frozenset({"single", "ddp", "fsdp2"}),
    geometry_problem=geometry_problem, total_steps=total_steps, schedule=schedule,
    rollout=True, critic=True, reward_model_in_training=True, reference_model=uses_reference,
    validates_on_mixture_val=True, job_shape=job_shape,
)
