"""One distinct training job, as the tracer sees it: which model, which code path, which shapes.

A :class:`JobSpec` is all a trace depends on besides the library versions (the cache keys on it):
two cells whose jobs have equal specs share one trace. Sizes are per micro-batch on one device,
the unit every trainer runs forward and backward on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

KINDS = ("sft", "grpo", "dpo", "ppo")
OPTIMIZERS = ("fused", "foreach", "for-loop")
CRITICS = ("value-head", "token-classification")
KERNELS = ("gpu", "cpu")
DTYPES = ("bfloat16", "float32", "float16")


@dataclass(frozen=True)
class JobSpec:
    """One training job's step, per device.

    kind: ``sft`` | ``grpo`` | ``dpo`` | ``ppo`` (what each traces: :mod:`rlmt.memtrace.jobs`).
    model: the policy's source (:func:`rlmt.memtrace.model_config.model_config`).
    sequences: rows per forward/backward micro-batch (DPO: pairs; chosen and rejected stack to 2x rows).
    prompt_length, completion_length: tokens per row (SFT: the sequence is ``completion_length``, its loss
        covers every token; DPO: each of chosen and rejected is prompt + completion).
    gradient_checkpointing: recompute each decoder layer in the backward pass (policy and critic).
    weights_dtype: the dtype the trainer holds the trained models in on the GPU; autocast_dtype: when set,
        forward passes run under autocast to it (rlmt's PPO: fp32 weights, bf16 autocast).
    optimizer: the AdamW implementation the trainer's optimizer runs (``fused``: transformers' default
        ``adamw_torch_fused``; ``foreach``: ``torch.optim.AdamW()`` on a GPU; ``for-loop``: on a CPU).
    accumulating: gradients of an earlier micro-batch are alive during forward and backward (any job
        with gradient accumulation: every paper job), else they appear only in the backward pass.
    temperature: sampling temperature the log-probs divide by (GRPO, PPO).
    entropy_coef: weight of the entropy bonus (GRPO, PPO): > 0 makes the entropy take part in backward.
    beta: GRPO's KL weight (> 0: a reference model and its no-grad forward); DPO's reference model is always there.
    reward_model, reward_sequences, reward_length: the reward model scoring rollouts (GRPO, PPO), rows and
        tokens of one scoring forward; None: no reward phase. reward_dtype: its weights (AnswerRewardScorer's
        "auto": bf16 on a GPU, fp32 on a CPU).
    critic: PPO's critic kind; rollout_sequences: rows per call of ``rlmt.train.rollout.response_logprobs``
        in the rollout (``sample``'s ``logprob_batch_size``: PPO passes its ``micro_batch_size``);
        logprob_chunk_tokens: passed on to rlmt's chunked log-prob functions when set (None: their default);
        kl_coef: PPO's KL penalty (> 0: a reference model, loaded in fp32 by ``train_ppo``, and its log-prob pass).
    kernels: ``gpu``: TRL's chunked log-prob head allocates what its Triton kernels allocate on a GPU (nothing
        per tile); ``cpu``: TRL's torch fallback as it runs on a CPU (what a CPU run allocates).
    layers: trace at exactly this depth (tests); None: at the model's own depth, extrapolated from two
        shallow traces (:mod:`rlmt.memtrace.tracer`).
    """

    kind: str
    model: str
    sequences: int
    prompt_length: int = 0
    completion_length: int = 0
    gradient_checkpointing: bool = False
    weights_dtype: str = "bfloat16"
    autocast_dtype: str | None = None
    optimizer: str = "fused"
    accumulating: bool = True
    temperature: float = 1.0
    entropy_coef: float = 0.0
    beta: float = 0.0
    reward_model: str | None = None
    reward_sequences: int = 0
    reward_length: int = 0
    reward_dtype: str = "bfloat16"
    critic: str = "value-head"
    rollout_sequences: int = 0
    logprob_chunk_tokens: int | None = None
    kl_coef: float = 0.0
    kernels: str = "gpu"
    layers: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in KINDS:
            problems.append(f"kind {self.kind!r} is not one of {KINDS}")
        if self.sequences < 1:
            problems.append(f"sequences must be >= 1, got {self.sequences}")
        if self.completion_length < 1 or self.prompt_length < 0:
            problems.append(f"completion_length must be >= 1 and prompt_length >= 0, got "
                            f"{self.completion_length} and {self.prompt_length}")
        if self.kind in ("grpo", "ppo") and self.prompt_length < 1:
            problems.append(f"{self.kind} scores completions after a prompt: prompt_length must be >= 1")
        if self.kind == "sft" and self.prompt_length:
            problems.append("sft trains on the whole sequence: give its length as completion_length, prompt_length 0")
        for name, value, allowed in (("optimizer", self.optimizer, OPTIMIZERS), ("critic", self.critic, CRITICS),
                                     ("kernels", self.kernels, KERNELS), ("weights_dtype", self.weights_dtype, DTYPES),
                                     ("reward_dtype", self.reward_dtype, DTYPES)):
            if value not in allowed:
                problems.append(f"{name} {value!r} is not one of {allowed}")
        if self.autocast_dtype is not None and self.autocast_dtype not in DTYPES:
            problems.append(f"autocast_dtype {self.autocast_dtype!r} is not one of {DTYPES}")
        if self.reward_model is not None and (self.reward_sequences < 1 or self.reward_length < 2):
            problems.append("a reward model needs reward_sequences >= 1 and reward_length >= 2")
        if self.kind == "ppo" and self.rollout_sequences < 1:
            problems.append("ppo needs rollout_sequences >= 1 (rows per response_logprobs call)")
        if self.layers is not None and self.layers < 1:
            problems.append(f"layers must be >= 1, got {self.layers}")
        if problems:
            raise ValueError("invalid JobSpec: " + "; ".join(problems))

    @property
    def sequence_length(self) -> int:
        return self.prompt_length + self.completion_length

    @property
    def has_reference(self) -> bool:
        return (self.kind == "dpo" or (self.kind == "grpo" and self.beta > 0)
                or (self.kind == "ppo" and self.kl_coef > 0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        return cls(**data)

    def replace(self, **changes: Any) -> "JobSpec":
        return dataclasses.replace(self, **changes)
