"""Disk a training job fills, from what its trainer writes per checkpoint and how many it keeps.

Bytes per checkpoint (P: the policy's parameters):

- TRL trainers under DeepSpeed ZeRO (SFT, GRPO, DPO): the bf16 model (2P), DeepSpeed's bf16 parameter partitions
  (2P) and its fp32 master weights and two AdamW moments (12P): 16P. Under DDP/FSDP the Trainer writes the model
  (2P) and the optimizer's two moments in the weights' dtype (4P with bf16 weights): 6P.
- rlmt's PPO: the bf16 policy model dir (2P), and the sharded fp32 weights and AdamW moments of policy and critic
  (2 x 12P), every rank writing its own shard.

A run keeps ``save_total_limit`` checkpoints plus the selected one (never pruned) and writes ``final/`` (the bf16
model, 2P). These are the files' sizes, not the filesystem's blocks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiskUse:
    per_checkpoint: float
    kept: int  # checkpoints on disk at the run's worst moment
    final: float

    @property
    def total(self) -> float:
        return self.per_checkpoint * self.kept + self.final


def checkpoint_bytes(algo: str, sharding: str, params: int) -> float:
    if algo == "ppo":
        return 2 * params + 2 * 12 * params
    if sharding in ("zero2", "zero3"):
        return 16 * params
    return 6 * params


def kept_checkpoints(save_total_limit: int | None, saved_steps: int, select_is_fixed: bool) -> int:
    """Checkpoints present at the worst moment: the last N, one more while the newest is written and the oldest
    not yet pruned, plus a protected selected step when it is no longer among the last N."""
    if save_total_limit is None:
        return saved_steps
    return min(saved_steps, save_total_limit + 1 + (1 if select_is_fixed else 0))


def disk_use(algo: str, sharding: str, params: int, *, save_total_limit: int | None, saved_steps: int,
             select_is_fixed: bool) -> DiskUse:
    return DiskUse(per_checkpoint=checkpoint_bytes(algo, sharding, params),
                   kept=kept_checkpoints(save_total_limit, saved_steps, select_is_fixed), final=2.0 * params)
