"""The settings pieces every algorithm's block shares: the strict base model, the rollout and checkpoint blocks.

They live with the algorithms, not in rlmt.config, because each algorithm module owns its settings
class and rlmt.config imports the algorithms (never the other way round); rlmt.config re-exports them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for every config block: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RolloutConfig(Strict):
    """Sampling from the policy during RL."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_prompt_length: int = Field(default=1024, description="Longer prompts keep their last tokens (see truncation_side).")
    truncation_side: Literal["left"] = Field(
        default="left", description="How an over-long prompt is cut, the same for GRPO and PPO: its last "
        "max_prompt_length tokens are kept, so the generation prompt is never cut (verl's truncation: left).")
    max_completion_length: int = 4096
    use_vllm: bool | None = Field(default=None, description="None: use vLLM when it is installed and a GPU is present.")
    vllm_gpu_memory_utilization: float = Field(default=0.4, gt=0, le=1, description="Share of each GPU's memory "
                                               "vLLM takes, colocated with training (reference: 0.4).")
    vllm_enable_sleep_mode: bool = Field(
        default=True, description="Put the colocated vLLM engine to sleep between rollouts (its weights and KV cache "
        "leave the GPU), so the update gets that memory back; the reference freed vLLM's cache between rollouts.")

    vllm_max_model_length: int | None = Field(
        default=None, ge=1, description="vLLM's max_model_len (the context its KV cache must hold for one sequence). "
        "None: max_prompt_length + max_completion_length. Never leave it to vLLM: it takes the model's own context "
        "(131,072 tokens for Llama-3.1), whose cache does not fit a 0.4 share of an 80 GB GPU.")

    def colocated_vllm(self, key: str):
        """The colocated vLLM engine these settings start (a JobShape's ``vllm``), or None when vLLM is off.
        `key`: the config block that holds them, e.g. ``algorithms.grpo.rollout``."""
        from rlmt.algorithms.job_shape import VllmUse

        if self.use_vllm is False:
            return None
        return VllmUse(self.vllm_gpu_memory_utilization, self.context_length, self.vllm_enable_sleep_mode, key)

    @property
    def context_length(self) -> int:
        """Tokens one sequence can hold: vllm_max_model_length, else prompt plus completion (never the model's own)."""
        return self.vllm_max_model_length or self.max_prompt_length + self.max_completion_length


class CheckpointConfig(Strict):
    save_steps: int = 45
    save_total_limit: int | None = Field(
        default=2, ge=1, description="Keep the last N checkpoints, plus the selected one, which is never pruned "
        "(None: all; an 8B ZeRO-3 checkpoint with optimizer state is ~128 GB).")
    select_step: int | Literal["last", "best_val_reward"] = Field(
        default="last", description="Checkpoint to evaluate (the paper's README took step 135 of 234).")
    stop_at_select_step: bool = Field(
        default=True, description="With an int select_step, end training at that step: nothing evaluates the later "
        "steps. The selected weights are the same as a longer run's when the learning-rate schedule does not depend "
        "on the run's length (constant, as GRPO's); rlmt preflight warns where it does.")


def check_validation(val_prompts: int | None, checkpoints: CheckpointConfig) -> None:
    if val_prompts == 0 and checkpoints.select_step == "best_val_reward":
        raise ValueError("checkpoints.select_step 'best_val_reward' needs validation, but val_prompts is 0")
