"""Warm-start SFT (TRL's trainer): the stage before a cell's algorithm, run once per warm-start policy.

Its step count depends on the SFT data set, known only when the job reads it.
"""

from __future__ import annotations

from pydantic import Field

import math

from rlmt.algorithms.base import Algorithm, GeometryProblem, global_batch_problem
from rlmt.algorithms.job_shape import JobShape
from rlmt.algorithms.settings import Strict


class SFTConfig(Strict):
    """Warm-start SFT (paper Table 5)."""

    learning_rate: float = 4e-6
    num_train_epochs: float = 2
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    global_batch_size: int = Field(default=16, description="Examples per optimizer step over all devices.")
    warmup_ratio: float = 0.1
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_length: int = 20000
    chat_template_path: str | None = Field(
        default=None, description="Jinja template with {% generation %} markers for the assistant-only loss, for "
        "chat templates that lack them and that TRL cannot patch (e.g. Llama-3.1-Instruct's); None: the model's own. "
        "'package:<name>' names a template shipped in rlmt/resources/chat_templates/ (package:llama3_1_training, "
        "package:qwen2_5_training); '{family}' expands to the model's family's shipped template.")
    gradient_checkpointing: bool = False
    bf16: bool | None = Field(default=None, description="None: bf16 when a GPU supports it.")
    save_steps: int = 200
    save_total_limit: int = 2
    max_steps: int = -1
    seed: int = 0


def geometry_problem(s: SFTConfig, world: int) -> GeometryProblem | None:
    """The global batch splits into per-device batches over `world` processes (with gradient accumulation)."""
    return global_batch_problem("sft", s, world)


def job_shape(s: SFTConfig, world: int, n_prompts: int, n_val: int) -> JobShape:
    """TRL's SFT step on one rank, every example at max_length (an upper bound: most are far shorter)."""
    per_device = s.per_device_train_batch_size
    return JobShape(
        kind="sft", sequences=per_device, prompt_tokens=0, completion_tokens=s.max_length,
        micro_batches_per_update=max(s.global_batch_size // (per_device * world), 1),
        checkpointing=s.gradient_checkpointing, reference=False,
        updates_upper_bound=math.ceil(s.num_train_epochs * n_prompts / s.global_batch_size),
        memory_keys=("algorithms.sft.per_device_train_batch_size", "algorithms.sft.gradient_checkpointing"),
    )


ALGORITHM = Algorithm(
    name="sft", title="SFT", settings=SFTConfig,
    supported_sharding=frozenset({"single", "ddp", "zero2", "zero3", "fsdp"}),
    geometry_problem=geometry_problem, trains_cell=False, job_shape=job_shape,
)
