"""What one rank of a training job computes, as the preflight traces and clocks it.

Each algorithm's module turns its settings into a :class:`JobShape` (its ``job_shape`` entry in the registry): the
micro-batch the trainer runs forward and backward, the models it holds, the rollouts it samples and how vLLM is
set up for them. The trainer reads the same settings fields, so the shape cannot describe another job than the one
that runs. Plain data: nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VllmUse:
    """A colocated vLLM engine: its share of the GPU, its context, and whether it sleeps during the update."""

    utilization: float
    max_model_len: int | None  # None: vLLM takes the model's own context
    sleeps: bool
    key: str  # the config block that sets it: algorithms.<algo>.rollout


@dataclass(frozen=True)
class JobShape:
    """One rank's work per optimizer update, and the run's length in rollouts and updates.

    Token counts are upper bounds: completions at their cap, SFT/DPO sequences at max_length.
    """

    kind: str  # the tracer's job: 'sft', 'grpo', 'dpo', 'ppo'
    sequences: int  # sequences per forward/backward on one rank (DPO: chosen + rejected)
    prompt_tokens: int  # per sequence, before the trained positions (SFT, DPO: 0)
    completion_tokens: int  # trained positions per sequence (SFT, DPO: the whole sequence)
    micro_batches_per_update: int  # forward/backward passes of one rank per optimizer update
    checkpointing: bool
    reference: bool  # a frozen copy of the initial policy runs forward on the same tokens
    critic: str | None = None  # PPO's critic kind
    entropy: bool = False  # the loss has an entropy term (its full-vocabulary softmax is kept for backward)
    logprob_rows: int = 0  # PPO: rows per old/reference log-prob forward during the rollout
    logprob_chunk_tokens: int = 0  # PPO: positions per log-softmax piece (0: all at once)
    rollout_sequences: int = 0  # sequences one rank samples per rollout (0: no sampling during training)
    updates_per_rollout: int = 1
    sampling_sequences: int = 0  # sequences one rank samples before training (DPO's pairs)
    sampling_prompt_tokens: int = 0
    sampling_completion_tokens: int = 0
    validation_sequences: int = 0  # sequences one rank samples at each checkpoint
    vllm: VllmUse | None = None
    reward_model_in_training: bool = False
    frees_grads: bool = False  # gradients are released after each update (zero_grad(set_to_none)) before a rollout
    # updates of the run where the schedule cannot know them before the data (SFT, DPO): an upper bound
    updates_upper_bound: int = 0
    # keys the preflight names when this shape's memory is over budget (the settings that shrink it)
    memory_keys: tuple[str, ...] = ()

    @property
    def tokens_per_sequence(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def tokens_per_update(self) -> int:
        """Tokens one rank runs forward and backward per optimizer update."""
        return self.sequences * self.tokens_per_sequence * self.micro_batches_per_update
