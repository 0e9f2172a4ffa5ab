"""The preflight's estimate of each GPU-check part, per phase: what ``rlmt preflight`` would say of the same job.

For each part the bench's settings (:func:`gpu_check_parts.settings_for`) become the algorithm's
:class:`~rlmt.algorithms.job_shape.JobShape` on one GPU (world 1) and the preflight's tracer spec
(:func:`rlmt.preflight.gpu_job.trace_spec`, sharding ``single``); :func:`rlmt.memtrace.trace` runs that step on
fake tensors through the real model code. Per measured phase the estimate is:

=========  =========================================================================================================
phase      estimate
=========  =========================================================================================================
update     the largest traced phase of ``forward``, ``backward*`` and ``optimizer_step`` (one micro-batch, per GPU)
score      the larger of the traced ``reward``, ``reference``, ``rollout_logprobs`` and ``values`` phases
generate   what the preflight keeps resident while vLLM samples (parameters, optimizer state, gradients unless the
           trainer frees them) plus vLLM's share (``vllm_gpu_memory_utilization`` x the GPU's memory; DPO's pair
           sampler: the dedicated engine's 0.9 share, no trainer resident). Under HF generate: the resident part
           only, the KV cache is not traced
=========  =========================================================================================================

No CUDA context is made here (the orchestrator runs this beside the parts with CUDA hidden): the device's memory
and dtype come as arguments. FLOPs per update token come from the traced ``forward`` and ``backward*`` phases
(recomputation under gradient checkpointing included, attention counted as torch's formulas count it: the full
S x S scores, causal masking not discounted), as the preflight's runtime estimate counts them.

    python bench/gpu_check_estimates.py --work DIR --parts grpo,ppo --gpu-memory BYTES --bf16 1 --vllm 1
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

from gpu_check_parts import Bench, settings_for, trl_usable

SCORE_PHASES = ("reward", "reference", "rollout_logprobs", "values")
# the training micro-batch's phases: ``forward`` and ``backward`` (and the tracer's sub-phases of the backward pass,
# ``backward.layers`` ...; an earlier tracer named the pair ``forward_backward``)
TRAIN_PHASES = ("forward", "backward", "forward_backward")


def is_train_phase(name: str) -> bool:
    return name.split(".")[0] in TRAIN_PHASES


def is_update_phase(name: str) -> bool:
    return is_train_phase(name) or name == "optimizer_step"
REWARD_TOKENS_PER_BATCH = 16384  # AnswerRewardScorer's default max_tokens_per_batch (rows per scoring forward)
RESIDENT = ("params", "grads", "optimizer")


def estimate(part: str, b: Bench, *, gpu_memory: int | None, bf16: bool, vllm: bool) -> dict[str, Any]:
    """Per-phase estimated bytes (and what each holds) and the traced FLOPs per update token of `part`."""
    from rlmt.algorithms import get
    from rlmt.memtrace import trace
    from rlmt.memtrace.sharding import phase_parts
    from rlmt.preflight.gpu_job import SAMPLING_UTILIZATION, trace_spec

    settings = settings_for(part, b, vllm, bf16=bf16)
    shape = get(part).job_shape(settings, 1, 100, 0)
    reward = None
    if shape.reward_model_in_training:
        length = min(4096, shape.tokens_per_sequence)
        reward = (b.reward, max(1, REWARD_TOKENS_PER_BATCH // length), length)
    spec = trace_spec(shape, settings, b.policy, "single", reward)
    if gpu_memory is None:
        spec = spec.replace(kernels="cpu")
    began = time.monotonic()
    result = trace(spec)
    parts = {p.name: phase_parts(result, p, "single", 1) for p in result.phases}
    totals = {name: sum(v.values()) for name, v in parts.items()}

    phases: dict[str, dict[str, Any]] = {}
    for label, belongs in (("update", is_update_phase), ("score", lambda n: n in SCORE_PHASES)):
        present = [n for n in totals if belongs(n)]
        if present:
            name = max(present, key=totals.get)
            phases[label] = {"bytes": totals[name], "holds": f"traced {name}"}
    fb = parts[next(n for n in parts if is_train_phase(n))]
    resident = sum(fb[k] for k in RESIDENT if not (k == "grads" and shape.frees_grads))
    if part == "dpo":
        resident = 0  # the pairs are sampled before the trainer loads anything
        share = SAMPLING_UTILIZATION if vllm else None
    else:
        share = settings.rollout.vllm_gpu_memory_utilization if vllm else None
    if share is not None and gpu_memory:
        phases["generate"] = {"bytes": resident + round(share * gpu_memory),
                              "holds": f"resident {resident / 2 ** 30:.2f} + vLLM share {share:g} x "
                                       f"{gpu_memory / 2 ** 30:.1f} GiB"}
    elif part != "dpo":
        phases["generate"] = {"bytes": resident, "holds": "resident training state only (HF KV cache not traced)"}
    rows = spec.sequences * (2 if part == "dpo" else 1)
    flops_per_token = sum(p.flops for p in result.phases if is_train_phase(p.name)) / (rows * spec.sequence_length)
    return {"phases": phases, "flops_per_update_token": flops_per_token, "spec": spec.to_dict(),
            "trace_s": round(time.monotonic() - began, 1),
            "widths": {"prompt": spec.prompt_length, "completion": spec.completion_length}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--parts", required=True, help="comma-separated parts to estimate")
    parser.add_argument("--gpu-memory", type=int, default=None, help="the GPU's total memory in bytes (none: CPU)")
    parser.add_argument("--bf16", type=int, choices=(0, 1), required=True)
    parser.add_argument("--vllm", type=int, choices=(0, 1), required=True)
    args = parser.parse_args()
    b = Bench.load(args.work)
    out: dict[str, Any] = {}
    for part in [p for p in args.parts.split(",") if p]:
        trl_ok, why_not = trl_usable()
        if not trl_ok:
            # rlmt.memtrace runs TRL's log-prob head (GRPO, DPO) and records TRL's version in every trace
            out[part] = {"error": f"not traced: rlmt.memtrace needs trl, and {why_not}"}
        else:
            try:
                out[part] = estimate(part, b, gpu_memory=args.gpu_memory, bf16=bool(args.bf16), vllm=bool(args.vllm))
            except Exception as err:  # reported next to the measurement, never guessed
                traceback.print_exc()
                out[part] = {"error": f"not traced: {type(err).__name__}: {err}"[:500]}
        (args.work / "estimates.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
