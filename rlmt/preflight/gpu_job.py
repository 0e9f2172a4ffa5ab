"""One GPU training job measured before it runs: memory per GPU, vLLM's KV budget, wall time, disk and host memory.

For a cell's SFT or training job on GPUs, :func:`budget` takes the algorithm's :class:`~rlmt.algorithms.job_shape.
JobShape` (one rank's work, from the registry), traces that step on fake tensors through the real model code
(:mod:`rlmt.memtrace`, cached) and adds what the trace cannot see as named terms:

========================  =========================================================================================
term                      what it rests on
========================  =========================================================================================
params, grads, optimizer,  the trace, sharded by the launcher's rule (:mod:`rlmt.memtrace.sharding`)
activations, temporaries,
gather, buckets
vLLM                      the colocated engine's share (``vllm_gpu_memory_utilization`` x the GPU) while it samples;
                          while it sleeps during the update (TRL sleep level 2, rlmt's PPO likewise) only its
                          non-torch memory (CUDA graphs) stays
CUDA context, NCCL        ``preflight.cuda_context_gb``, ``preflight.nccl_buffers_gb`` per process
fragmentation             ``preflight.fragmentation`` x the traced peak
========================  =========================================================================================

The GPU's usable memory is ``gpu_facts.yaml``'s for ``preflight.gpu`` (79.6 GiB for an H100 80 GB), else the rule's
``gpu_mem_gb``. The job's peak is the larger of the update (the traced step) and the rollout (the training state
that stays resident while vLLM samples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from rlmt.algorithms.job_shape import JobShape
from rlmt.preflight import disk as disk_rules
from rlmt.preflight.runtime_estimate import (CHECKPOINT_WRITE_GB_S, Estimate, Gpu, compute_seconds, decode_seconds,
                                             forward_flops)
from rlmt.preflight.vllm_kv import GIB, NON_TORCH_GIB, KVBudget, kv_budget, kv_bytes_per_token

# rlmt's PPO loads the initial policy and its critic on the main process, one model at a time in fp32, and
# broadcasts them into the other ranks' FSDP2 shards (rlmt.train.ppo_models); "every-rank" is the code path before
# issue 28 (each rank materialised both in fp32 before sharding).
PPO_HOST_LOAD = "rank0"
SAMPLING_UTILIZATION = 0.9  # a dedicated vLLM engine (DPO's pair sampling) takes vLLM's default share


@dataclass(frozen=True)
class GpuModel:
    """What the preflight needs of a model's shapes (from :func:`rlmt.memtrace.model_config`)."""

    params: int
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    context: int | None


@dataclass
class JobBudget:
    """The measured budget of one job; `problems` are (level, key, message) for the preflight's findings."""

    job: str  # 'sft' or the cell's algorithm
    memory_parts: dict[str, float] = field(default_factory=dict)  # bytes per GPU at the peak, by part
    memory_phase: str = ""
    usable: float = 0.0
    kv: KVBudget | None = None
    estimate: Estimate | None = None
    limit_hours: float = 0.0
    disk: disk_rules.DiskUse | None = None
    host_bytes: float = 0.0
    host_limit: float = 0.0
    unchecked: list[str] = field(default_factory=list)

    @property
    def memory(self) -> float:
        return sum(self.memory_parts.values())


def load_gpus() -> dict[str, Gpu]:
    from importlib import resources

    import yaml

    raw = yaml.safe_load(resources.files("rlmt.resources").joinpath("gpu_facts.yaml").read_text())
    return {name: Gpu(name=name, **facts) for name, facts in raw.items()}


@lru_cache(maxsize=None)
def gpu_model(source: str) -> GpuModel | None:
    """The shapes of `source` from its configuration found offline (None: unknown).

    A config.json (a local dir, the Hugging Face cache, rlmt/resources/model_configs) is read as JSON, so a warm
    preflight never imports transformers; a tiny-zoo or GGUF source goes through :func:`rlmt.memtrace.model_config`.
    """
    import json

    from rlmt.memtrace.model_config import CONFIG_DIR, hf_cache_config_file, shipped_config_name

    data = None
    local = Path(source).expanduser() / "config.json"
    if not source.startswith(("tiny:", "gguf:")) and local.is_file():
        data = json.loads(local.read_text())
    elif (cached := hf_cache_config_file(source)) is not None:
        data = json.loads(cached.read_text())
    elif (shipped := shipped_config_name(source)) is not None:
        from importlib import resources

        data = json.loads(resources.files("rlmt.resources").joinpath(CONFIG_DIR, f"{shipped}.json").read_text())
    else:
        from rlmt.memtrace import model_config

        found = model_config(source)
        if found is None:
            return None
        data = found[0].get_text_config().to_dict()
    data = data.get("text_config") or data
    from rlmt.preflight import Shape

    heads = data["num_attention_heads"]
    shape = Shape(hidden=data["hidden_size"], intermediate=data["intermediate_size"], layers=data["num_hidden_layers"],
                  heads=heads, kv_heads=data.get("num_key_value_heads") or heads, vocab=data["vocab_size"],
                  qkv_bias=data.get("model_type") == "qwen2", tied_embeddings=bool(data.get("tie_word_embeddings")))
    context = data.get("max_position_embeddings")
    return GpuModel(params=shape.params, layers=shape.layers, kv_heads=shape.kv_heads,
                    head_dim=data.get("head_dim") or shape.hidden // heads, hidden=shape.hidden,
                    intermediate=shape.intermediate, vocab=shape.vocab, context=int(context) if context else None)


# ----------------------------------------------------------------------------- the trace


def trace_spec(shape: JobShape, settings: Any, policy: str, sharding: str, reward: tuple[str, int, int] | None):
    """The tracer's JobSpec for one rank's step (`reward`: source, rows and tokens of one scoring forward)."""
    from rlmt.memtrace import JobSpec, precision

    kind = shape.kind
    rows = shape.sequences // 2 if kind == "dpo" else shape.sequences  # DPO's spec counts pairs
    temperature = getattr(getattr(settings, "rollout", None), "temperature", 1.0) if kind in ("grpo", "ppo") else 1.0
    spec = dict(kind=kind, model=policy, sequences=rows, prompt_length=shape.prompt_tokens,
                completion_length=shape.completion_tokens, gradient_checkpointing=shape.checkpointing,
                accumulating=shape.micro_batches_per_update > 1, temperature=temperature,
                **precision(kind, sharding, bf16=getattr(settings, "bf16", None) is not False))
    if kind in ("grpo", "ppo"):
        spec["entropy_coef"] = float(getattr(settings, "entropy_coef", 0.0))
    if kind == "grpo":
        spec["beta"] = float(settings.beta)
    if kind == "ppo":
        spec.update(critic=shape.critic or "value-head", rollout_sequences=shape.logprob_rows,
                    logprob_chunk_tokens=shape.logprob_chunk_tokens or None, kl_coef=float(settings.kl_coef))
    if reward is not None and shape.reward_model_in_training:
        spec.update(reward_model=reward[0], reward_sequences=reward[1], reward_length=reward[2])
    return JobSpec(**spec)


def traced_memory(spec, sharding: str, world: int, cache_dir: Path):
    """(per-GPU memory of the traced step, the trace)."""
    from rlmt.memtrace import cached_trace, per_gpu

    result = cached_trace(spec, cache_dir)
    return per_gpu(result, sharding, world), result


# ----------------------------------------------------------------------------- the budget


def budget(*, job: str, shape: JobShape, settings: Any, policy_source: str, reward: tuple[str, int, int] | None,
           sharding: str, world: int, gpus_per_node: int, gpu: Gpu, usable: float, preflight: Any,
           schedule_updates: int | None, schedule_rollouts: int | None, saved_steps: int,
           save_total_limit: int | None, select_is_fixed: bool, runtime_min: float, mem_mb: float,
           cache_dir: Path, trace: bool) -> JobBudget:
    """The job's budget (see the module docstring); `trace` False: memory and compute are not checked."""
    out = JobBudget(job=job, usable=usable, limit_hours=runtime_min / 60, host_limit=mem_mb * 1e6)
    model = gpu_model(policy_source)
    if model is None:
        out.unchecked.append(f"{policy_source}: no configuration found offline (a local dir, the Hugging Face cache "
                             "or rlmt/resources/model_configs): memory, KV cache and runtime not checked")
        return out
    reward_model = gpu_model(reward[0]) if reward is not None and shape.reward_model_in_training else None

    # -- memory: the traced step under the job's sharding, plus the terms the trace cannot see
    result = None
    if trace:
        try:
            spec = trace_spec(shape, settings, policy_source, sharding, reward)
            mem, result = traced_memory(spec, sharding, world, cache_dir)
        except Exception as err:  # an unknown model, or a trace the tracer cannot run: say so, never guess
            out.unchecked.append(f"memory not traced: {type(err).__name__}: {err}")
        else:
            frag = preflight.fragmentation * mem.total
            update = {**{k: float(v) for k, v in mem.parts.items() if v},
                      "CUDA context": preflight.cuda_context_gb * GIB, "NCCL": preflight.nccl_buffers_gb * GIB,
                      "fragmentation": frag}
            out.memory_parts, out.memory_phase = update, mem.phase
            if shape.vllm is not None:
                share = shape.vllm.utilization * usable
                if shape.vllm.sleeps:
                    update["vLLM (asleep)"] = NON_TORCH_GIB * GIB
                    kept = [k for k in ("params", "grads", "optimizer", "buckets", "CUDA context", "NCCL")
                            if k in update and not (k == "grads" and shape.frees_grads)]
                    rollout = sum(update[k] for k in kept) + share
                    if rollout > sum(update.values()):
                        out.memory_parts = {k: update[k] for k in kept}
                        out.memory_parts["vLLM"] = share
                        out.memory_phase = "rollout"
                else:
                    update["vLLM"] = share
    else:
        out.unchecked.append("memory not traced (--no-trace)")

    # -- vLLM's KV cache for the rollouts
    if shape.vllm is not None and shape.rollout_sequences:
        max_len = shape.vllm.max_model_len or model.context
        if max_len is None:
            out.unchecked.append("vLLM context unknown: no max_model_len and no model context found")
        else:
            out.kv = kv_budget(gpu_bytes=usable, utilization=shape.vllm.utilization, params=model.params,
                               layers=model.layers, kv_heads=model.kv_heads, head_dim=model.head_dim,
                               hidden=model.hidden, intermediate=model.intermediate, vocab=model.vocab,
                               max_model_len=max_len, sequences_needed=shape.rollout_sequences)

    # -- wall time
    out.estimate = _estimate(shape, model, reward_model, result, gpu, preflight, sharding, world,
                             schedule_updates, schedule_rollouts, saved_steps, out.kv)

    # -- disk and host memory
    out.disk = disk_rules.disk_use(job, sharding, model.params, save_total_limit=save_total_limit,
                                   saved_steps=saved_steps, select_is_fixed=select_is_fixed)
    out.host_bytes = _host_bytes(shape, model, reward_model, sharding, gpus_per_node)
    return out


def _estimate(shape: JobShape, model: GpuModel, reward_model: GpuModel | None, result, gpu: Gpu, preflight: Any,
              sharding: str, world: int, updates: int | None, rollouts: int | None, saves: int,
              kv: KVBudget | None) -> Estimate:
    est = Estimate()
    eff, mfu = preflight.decode_bandwidth_efficiency, preflight.mfu
    updates = updates if updates is not None else shape.updates_upper_bound
    rollouts = rollouts if rollouts is not None else 0
    kv_per_token = kv_bytes_per_token(model.layers, model.kv_heads, model.head_dim)
    weights = 2.0 * model.params

    def decode(sequences: int, prompt: int, completion: int, at_once: int) -> float:
        return decode_seconds(gpu, eff, weight_bytes=weights, kv_bytes_per_token=kv_per_token, sequences=sequences,
                              prompt_tokens=prompt, completion_tokens=completion, at_once=at_once)

    at_once = kv.sequences_at_once if kv is not None and kv.fits_one_request else 0
    if shape.rollout_sequences:
        if shape.vllm is None:
            est.notes.append("rollouts through HF generate: decode at the weights' read rate, no KV limit")
            at_once = shape.rollout_sequences
        per = decode(shape.rollout_sequences, shape.prompt_tokens, shape.completion_tokens, at_once)
        if shape.vllm is None and sharding in ("zero3", "fsdp", "fsdp2") and world > 1:
            # a sharded policy gathers every layer for every decoded token
            per += shape.completion_tokens * weights * (world - 1) / world / (gpu.interconnect_gb_s * 1e9)
        est.add("rollouts", rollouts * per)
        reward_tokens = shape.rollout_sequences * shape.tokens_per_sequence
        if reward_model is not None:
            est.add("reward", rollouts * compute_seconds(gpu, mfu, forward_flops(reward_model.params, reward_tokens)))
        est.add("prefill", rollouts * compute_seconds(gpu, mfu, forward_flops(model.params,
                                                                               shape.rollout_sequences * shape.prompt_tokens)))
    if shape.validation_sequences:
        est.add("validation", saves * decode(shape.validation_sequences, shape.prompt_tokens, shape.completion_tokens,
                                             at_once or shape.validation_sequences))
    if shape.sampling_sequences:  # DPO: a dedicated engine per rank before training, then the reward model
        dedicated = kv_budget(gpu_bytes=gpu.usable_gib * GIB, utilization=SAMPLING_UTILIZATION, params=model.params,
                              layers=model.layers, kv_heads=model.kv_heads, head_dim=model.head_dim,
                              hidden=model.hidden, intermediate=model.intermediate, vocab=model.vocab,
                              max_model_len=shape.sampling_prompt_tokens + shape.sampling_completion_tokens,
                              sequences_needed=shape.sampling_sequences)
        est.add("pair sampling", decode(shape.sampling_sequences, shape.sampling_prompt_tokens,
                                        shape.sampling_completion_tokens, max(dedicated.sequences_at_once, 1)))
        if reward_model is not None or shape.kind == "dpo":
            scorer = reward_model or model  # DPO's pair builder scores with the cell's reward model (same size class)
            tokens = shape.sampling_sequences * (shape.sampling_prompt_tokens + shape.sampling_completion_tokens)
            est.add("pair scoring", compute_seconds(gpu, mfu, forward_flops(scorer.params, tokens)))
    if result is not None:
        flops_per_update = result.flops * shape.micro_batches_per_update
        est.add("updates", updates * compute_seconds(gpu, mfu, flops_per_update))
    else:
        est.notes.append("update compute not estimated (no trace)")
    ckpt = disk_rules.checkpoint_bytes(shape.kind, sharding, model.params)
    est.add("checkpoints", saves * ckpt / (CHECKPOINT_WRITE_GB_S * 1e9))
    return est


def _host_bytes(shape: JobShape, model: GpuModel, reward_model: GpuModel | None, sharding: str,
                gpus_per_node: int) -> float:
    """Host memory of one node while the job's ranks load their models (all ranks load at once)."""
    ranks = max(gpus_per_node, 1)
    per_rank = 0.0
    if reward_model is not None:  # read on the CPU in bf16, then moved to the rank's GPU
        per_rank += 2.0 * reward_model.params
    if shape.kind == "ppo":
        if PPO_HOST_LOAD == "every-rank":
            return ranks * (per_rank + 8.0 * model.params)  # fp32 policy and critic on every rank
        return ranks * per_rank + 4.0 * model.params  # the main process reads one fp32 model at a time
    if sharding != "zero3":  # a full bf16 copy per rank before it moves (ZeRO-3 partitions while loading)
        per_rank += 2.0 * model.params * (2 if shape.reference else 1)
    return ranks * per_rank
