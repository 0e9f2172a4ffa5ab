"""Per-GPU memory and FLOPs of a training job, measured on fake tensors through the real code.

``rlmt preflight`` asks this package what one optimizer step of each distinct training job needs. The
job's models are built from their configurations (:mod:`~rlmt.memtrace.model_config`: no weights, no
network), the step runs through the trainers' own code paths on fake tensors (:mod:`~rlmt.memtrace.jobs`,
:mod:`~rlmt.memtrace.tracer`), and the bytes per category (parameters, gradients, optimizer state,
activations, temporaries) at each phase's peak and the step's FLOPs come back as a :class:`TraceResult`.
:mod:`~rlmt.memtrace.sharding` turns a trace into per-GPU parts under DDP, ZeRO or FSDP;
:mod:`~rlmt.memtrace.cache` keeps traces as JSON.

Public API::

    model_config(source) -> (PretrainedConfig, origin) | None
    context_length(source) -> int | None
    kv_bytes_per_token(config, dtype_bytes) -> int
    JobSpec(kind, model, sequences, prompt_length=0, completion_length=0, ...)   # frozen
    trace(spec) -> TraceResult                  # UnknownModelError when a model has no config offline
    cached_trace(spec, cache_dir) -> TraceResult
    precision(kind, sharding, bf16=True) -> {"weights_dtype", "autocast_dtype", "optimizer"}
    per_gpu(result, sharding, world) -> GPUMemory   # .phase, .parts, .total, .describe()

Importing the package imports no torch; :func:`trace` does.
"""

from rlmt.memtrace.cache import cache_key, cached_trace
from rlmt.memtrace.model_config import context_length, kv_bytes_per_token, model_config
from rlmt.memtrace.result import ModelMemory, PhaseMemory, TraceResult
from rlmt.memtrace.sharding import GPUMemory, per_gpu, precision
from rlmt.memtrace.spec import JobSpec

__all__ = ["GPUMemory", "JobSpec", "ModelMemory", "PhaseMemory", "TraceResult", "UnknownModelError", "cache_key",
           "cached_trace", "context_length", "kv_bytes_per_token", "model_config", "per_gpu", "precision", "trace",
           "trace_count"]


def __getattr__(name: str):
    if name in ("trace", "trace_count", "UnknownModelError"):
        from rlmt.memtrace import tracer

        return getattr(tracer, name)
    raise AttributeError(f"module 'rlmt.memtrace' has no attribute {name!r}")
