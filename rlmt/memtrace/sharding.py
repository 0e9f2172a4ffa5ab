"""Per-GPU memory of a traced job under a launcher's sharding, as named parts.

A trace (:mod:`rlmt.memtrace.tracer`) measures one process holding everything: the trained models in
the dtype the trainer computes in, AdamW's state on them, and one micro-batch's activations and
temporaries. Sharding changes where the model states live, not a micro-batch's activations, so
each phase's parts are recomputed from the traced parameter counts with these rules (P: parameters
of the trained models; N: processes; bytes per parameter):

===========  ==================  ==================  ======================  ====================
sharding     params              grads               optimizer               added
===========  ==================  ==================  ======================  ====================
single       as traced           as traced           as traced (AdamW on     --
                                                     the traced dtype)
ddp          as traced           as traced           as traced               buckets: the grads'
                                                                             size again (DDP's
                                                                             default buckets copy
                                                                             the gradients)
zero2        as traced (bf16)    2P / N              12P / N (fp32 master    --
                                                     + fp32 Adam moments)
zero3        2P / N              2P / N              12P / N                 gather
fsdp, fsdp2  4P / N (fp32        4P / N (fp32        8P / N (fp32 moments)   gather
             master shards)      shards)
===========  ==================  ==================  ======================  ====================

- ZeRO: DeepSpeed with bf16 keeps bf16 weights and gradients and fp32 master weights and Adam
  moments, 2 + 2 + 12 bytes per parameter (Rajbhandari et al. 2020, "ZeRO", Sec. 3.1); stage 2
  partitions gradients and optimizer state, stage 3 the weights too.
- FSDP with mixed precision holds fp32 sharded parameters (accelerate upcasts a bf16-loaded model to
  fp32 for FSDP 1 and 2; rlmt's PPO loads fp32) and fp32 sharded gradients (``reduce_dtype``), and
  computes with bf16 copies gathered per unit.
- gather: the unsharded copies of the models that compute in the phase: each one's non-layer
  parameters (embeddings, final norm, head: the root unit, kept gathered between its forward and
  backward) plus two decoder layers (the one computing and the one prefetched), in the traced
  (compute) dtype.
- The reference model is sharded like the policy's weights under zero3 and fsdp (TRL prepares it
  with the trainer's engine), a full copy otherwise; the reward model is a full copy on every rank.
- Gradients scale with the traced phase's gradient bytes (zero in phases without them); the
  optimizer step's temporaries scale with the optimizer state it steps (fp32 shards: x 4 / traced
  bytes per parameter / N).

``activations``, ``temporaries`` (other than the optimizer step's) and ``other`` are per process and
stay as traced. ``buffers`` are counted with ``params``.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlmt.memtrace.result import GIB, ModelMemory, PhaseMemory, TraceResult

SHARDINGS = ("single", "ddp", "zero2", "zero3", "fsdp", "fsdp2")
PARTS = ("params", "grads", "optimizer", "activations", "temporaries", "gather", "buckets", "other")
MASTER_BYTES = 4  # fp32 master weights / gradients per parameter
ZERO_OPTIMIZER_BYTES = 12  # fp32 master weights + two fp32 Adam moments
FSDP_OPTIMIZER_BYTES = 8  # two fp32 Adam moments (the fp32 master is the sharded parameter itself)
ZERO_GRAD_BYTES = 2  # bf16 gradients


@dataclass(frozen=True)
class GPUMemory:
    """Bytes on one GPU at the step's peak: the phase that peaks and its named parts."""

    sharding: str
    world: int
    phase: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self, unit: float = GIB) -> str:
        """``params 1.9, grads 1.9, optimizer 11.3, activations 3.5, ...`` (non-zero parts, in `unit`s)."""
        return ", ".join(f"{k} {v / unit:.1f}" for k, v in self.parts.items() if v)


def precision(kind: str, sharding: str, bf16: bool = True) -> dict[str, str | None]:
    """The spec fields (``weights_dtype``, ``autocast_dtype``, ``optimizer``) a job runs with on GPUs.

    TRL's trainers load the policy in bf16 and step ``adamw_torch_fused`` (transformers' default);
    rlmt's PPO holds fp32 weights under bf16 autocast and steps ``torch.optim.AdamW`` (foreach on a
    GPU), except under FSDP2, whose mixed-precision policy computes with bf16 parameters.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; allowed: {SHARDINGS}")
    if not bf16:
        return {"weights_dtype": "float32", "autocast_dtype": None,
                "optimizer": "foreach" if kind == "ppo" else "fused"}
    if kind != "ppo":
        return {"weights_dtype": "bfloat16", "autocast_dtype": None, "optimizer": "fused"}
    if sharding == "fsdp2":
        return {"weights_dtype": "bfloat16", "autocast_dtype": "bfloat16", "optimizer": "foreach"}
    return {"weights_dtype": "float32", "autocast_dtype": "bfloat16", "optimizer": "foreach"}


def per_gpu(result: TraceResult, sharding: str, world: int) -> GPUMemory:
    """The per-GPU parts of the phase with the largest per-GPU total (see the module docstring)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"unknown sharding {sharding!r}; allowed: {SHARDINGS}")
    if world < 1 or (sharding == "single" and world != 1):
        raise ValueError(f"sharding {sharding!r} with {world} processes")
    phases = [GPUMemory(sharding, world, p.name, phase_parts(result, p, sharding, world)) for p in result.phases]
    return max(phases, key=lambda g: g.total)


def phase_parts(result: TraceResult, phase: PhaseMemory, sharding: str, world: int) -> dict[str, int]:
    """One phase's bytes on one GPU, by part."""
    traced = phase.bytes
    trained = [m for m in result.models if m.trainable]
    trained_params = sum(m.params for m in trained)
    traced_state_bytes = sum(m.param_bytes for m in trained)
    bytes_per_param = traced_state_bytes / trained_params if trained_params else 1.0
    sharded = sharding in ("zero2", "zero3", "fsdp", "fsdp2")

    parts = dict.fromkeys(PARTS, 0)
    parts["params"] = sum(_param_bytes(m, sharding, world) for m in result.models) + traced["buffers"]
    parts["activations"] = traced["activations"]
    parts["other"] = traced["other"]
    temporaries = traced["temporaries"]
    if not sharded:
        parts["grads"] = traced["grads"]
        parts["optimizer"] = traced["optimizer"]
        if sharding == "ddp":
            parts["buckets"] = traced_state_bytes
    else:
        grad_bytes = ZERO_GRAD_BYTES if sharding.startswith("zero") else MASTER_BYTES
        parts["grads"] = round(traced["grads"] * grad_bytes / bytes_per_param / world)
        optimizer_bytes = ZERO_OPTIMIZER_BYTES if sharding.startswith("zero") else FSDP_OPTIMIZER_BYTES
        parts["optimizer"] = round(trained_params * optimizer_bytes / world) if traced["optimizer"] else 0
        if phase.name == "optimizer_step":
            temporaries = round(temporaries * MASTER_BYTES / bytes_per_param / world)
        if sharding != "zero2":
            parts["gather"] = _gather_bytes(result, phase, sharding)
    parts["temporaries"] = temporaries
    return parts


def _param_bytes(model: ModelMemory, sharding: str, world: int) -> int:
    if model.trainable:
        if sharding == "zero3":
            return round(model.params * 2 / world)
        if sharding in ("fsdp", "fsdp2"):
            return round(model.params * MASTER_BYTES / world)
        return model.param_bytes
    if model.role == "reference" and sharding in ("zero3", "fsdp"):
        return round(model.param_bytes / world)
    return model.param_bytes


def _gather_bytes(result: TraceResult, phase: PhaseMemory, sharding: str) -> int:
    """Unsharded copies while the phase's sharded models compute: root units plus two layers."""
    computing = [m for m in result.models if m.role in phase.computing and
                 (m.trainable or (m.role == "reference" and sharding in ("zero3", "fsdp")))]
    if not computing:
        return 0
    return sum(m.non_layer_bytes for m in computing) + 2 * max(m.layer_bytes for m in computing)
