"""A training job's wall time, estimated from its schedule and the GPU's datasheet, against its Slurm limit.

Per optimizer step on one rank (all ranks work in parallel on their share):

- **decode** (RL rollouts, DPO sampling): vLLM decodes every sequence of a wave together, one token per step; a
  step reads the weights once and the wave's KV cache once, over ``hbm_tb_s x decode_bandwidth_efficiency``.
  A wave lasts ``max_completion_length`` steps (some sequence of a batch of dozens reaches the cap); the KV read
  assumes sequences at half the completion cap on average (``MEAN_FILL``). More sequences than the cache holds at
  full length (vLLM's concurrency, :mod:`rlmt.preflight.vllm_kv`) run in ``ceil(needed x MEAN_FILL / at_once)``
  waves (short sequences free their blocks early).
- **compute** (prefill, update, reference and reward forwards): FLOPs over ``bf16_tflops x mfu``. FLOPs come from
  the traced step where one exists (FlopCounterMode over the real modelling code), else ``2 x params`` per token
  forward and ``4 x params`` backward (plus a forward's recompute under activation checkpointing).
- **checkpoints**: bytes written per save over ``CHECKPOINT_WRITE_GB_S``.

All figures are upper-bound-leaning: completions are taken at the cap for a wave's length. The README states how
far this lands from the reference's measured 14-16 h for 234 GRPO steps on 8 x H100 (tests/test_preflight_budget.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MEAN_FILL = 0.5  # a sequence's mean length as a share of the completion cap, for KV reads and wave counts
CHECKPOINT_WRITE_GB_S = 2.0  # shared filesystem write rate of one node (GB/s)


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float
    hbm_tb_s: float
    usable_gib: float
    interconnect_gb_s: float


@dataclass
class Estimate:
    """Seconds by part for the whole run, and what they rest on."""

    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds

    @property
    def hours(self) -> float:
        return sum(self.parts.values()) / 3600

    def describe(self) -> str:
        return ", ".join(f"{k} {v / 3600:.1f} h" for k, v in self.parts.items() if v >= 36)


def decode_seconds(gpu: Gpu, efficiency: float, *, weight_bytes: float, kv_bytes_per_token: int, sequences: int,
                   prompt_tokens: int, completion_tokens: int, at_once: int) -> float:
    """One engine decoding `sequences` completions of up to `completion_tokens` after `prompt_tokens` each."""
    if sequences <= 0:
        return 0.0
    at_once = max(1, min(at_once, sequences)) if at_once > 0 else 1
    waves = max(1, math.ceil(sequences * MEAN_FILL / at_once))
    per_wave = min(sequences, at_once)
    mean_context = prompt_tokens + MEAN_FILL * completion_tokens
    bytes_per_step = weight_bytes + per_wave * mean_context * kv_bytes_per_token
    return waves * completion_tokens * bytes_per_step / (gpu.hbm_tb_s * 1e12 * efficiency)


def compute_seconds(gpu: Gpu, mfu: float, flops: float) -> float:
    return flops / (gpu.bf16_tflops * 1e12 * mfu)


def train_flops(params: int, tokens: float, *, checkpointing: bool) -> float:
    """Forward (2P), backward (4P) and, with activation checkpointing, a second forward per token."""
    return (8 if checkpointing else 6) * params * tokens


def forward_flops(params: int, tokens: float) -> float:
    return 2 * params * tokens
