"""PPO's rollouts through a colocated vLLM engine, one per rank, fed the sharded actor's weights.

Why: under FSDP2 (``reshard_after_forward``) transformers' ``generate`` all-gathers every layer for
every decoded token: 5-7 minutes a step on 8 x H100 at 4,096 completion tokens, 236 steps past the
16-hour Slurm limit (issue 28, defect 5). vLLM decodes from its own unsharded bf16 copy with a paged
KV cache. The pieces, in the order a step uses them:

1. :meth:`VLLMRolloutEngine.start` builds ``vllm.LLM`` on this rank as TRL's colocate mode does
   (``distributed_executor_backend="external_launcher"``, one engine per rank, no tensor parallelism),
   with ``max_model_len`` = prompt + completion limit (never the model's own 131,072), the configured
   share of GPU memory, sleep mode, and ``generation_config="vllm"`` (the checkpoint's sampling
   defaults are ignored: only :func:`sampling_fields` shapes the distribution);
2. before each rollout :meth:`~VLLMRolloutEngine.load_policy` wakes the weights and streams
   :func:`full_named_parameters` of the actor into the engine's ``load_weights``, one parameter gathered
   at a time (every rank takes part: the gather is a collective), then drops the prefix cache;
3. :meth:`~VLLMRolloutEngine.generate` wakes the KV cache, samples with :func:`sampling_fields` (the
   same tempered top-p distribution the PPO log-probs score: no top-k, min-p or penalties; stop strings
   kept in the output; the policy's EOS ids), one seed per prompt drawn from torch's generator (seeded
   per step and rank, so a resumed run draws the same), and puts the engine back to sleep (level 2:
   weights and KV cache leave the GPU for the update; the next rollout reloads the weights anyway).

vLLM is imported only inside :meth:`VLLMRolloutEngine.start`: it exists on GPU nodes alone
(``pip install 'rlmt[vllm]'``). :func:`rollout_engine` chooses: vLLM where
:func:`rlmt.train.runtime.vllm_wanted` says so (``rollout.use_vllm``; None: installed and a GPU
present; a GPU machine without vLLM is an error unless ``use_vllm: false``), else None: the rollout then
samples with transformers' ``generate`` (CPU runs and tests).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from rlmt.train.rollout import SamplingSpec

# wrapper prefixes that are no part of a checkpoint's names (torch's checkpoint_wrapper, torch.compile)
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.")


def sampling_fields(spec: SamplingSpec, seed: int | None = None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for `spec`, every field that shapes the distribution set.

    top_k 0 is vLLM's "all tokens" (0.22+, as TRL passes it); include_stop_str_in_output keeps the stop
    string, which the answer extraction and the response mask need; stop_token_ids are the policy's EOS
    ids, the same set the HF path stops at.
    """
    return {
        "n": 1,
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": spec.max_new_tokens,
        "min_tokens": 0,
        "stop": list(spec.stop_strings) or None,
        "include_stop_str_in_output": True,
        "stop_token_ids": list(spec.eos_token_ids),
        "ignore_eos": False,
        "seed": seed,
        "logprobs": None,
        "detokenize": bool(spec.stop_strings),  # stop strings are matched on text
    }


def full_named_parameters(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, whole tensor)`` for each of `model`'s parameters, one at a time, under its checkpoint name.

    The names are the Hugging Face checkpoint's (``model.layers.0.self_attn.q_proj.weight``,
    ``lm_head.weight``), which vLLM's Llama and Qwen2 ``load_weights`` map onto their fused layers;
    a tied output embedding appears once, as in the checkpoint. Under FSDP2 each parameter is a
    DTensor shard: it is cast to `dtype` first (so the gather moves bf16, not fp32) and all-gathered
    whole (``full_tensor``), a collective that every rank must run in the same order; only one
    parameter is whole at a time.
    """
    for name, param in model.named_parameters():
        tensor = param.detach()
        if dtype is not None:
            tensor = tensor.to(dtype)
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        for prefix in _WRAPPER_PREFIXES:
            name = name.replace(prefix, "")
        yield name, tensor


class VLLMRolloutEngine:
    """A colocated vLLM engine on this rank (see the module docstring); a :class:`~rlmt.train.rollout.RolloutEngine`.

    `llm` is a ``vllm.LLM`` (from :meth:`start`); `make_sampling_params` builds ``vllm.SamplingParams``
    from :func:`sampling_fields`. `sleep_mode`: the engine sleeps (level 2) between rollouts.
    """

    def __init__(self, llm, *, make_sampling_params: Callable[..., Any], sleep_mode: bool,
                 weights_dtype: torch.dtype = torch.bfloat16):
        self.llm = llm
        self.make_sampling_params = make_sampling_params
        self.sleep_mode = sleep_mode
        self.weights_dtype = weights_dtype

    @classmethod
    def start(cls, model_dir: str | Path, *, gpu_memory_utilization: float, max_model_len: int, sleep_mode: bool,
              max_num_seqs: int, seed: int, dtype: str = "bfloat16",
              trust_remote_code: bool = False) -> "VLLMRolloutEngine":
        """Build the engine from `model_dir` (the policy's architecture, tokenizer and initial weights)."""
        from vllm import LLM, SamplingParams

        _launcher_env()
        llm = LLM(
            model=str(model_dir),
            dtype=dtype,
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            # vLLM's memory profiler is misled by its large default (TRL's colocate mode sets the same)
            max_num_batched_tokens=4096,
            enable_sleep_mode=sleep_mode,
            generation_config="vllm",  # never the checkpoint's sampling defaults (top_k 20, ...)
            seed=seed,
            trust_remote_code=trust_remote_code,
        )
        engine = cls(llm, make_sampling_params=SamplingParams, sleep_mode=sleep_mode,
                     weights_dtype=getattr(torch, dtype))
        engine.sleep()
        return engine

    def load_policy(self, policy: nn.Module) -> int:
        """Copy the actor's current weights into the engine; returns the number of tensors loaded.

        Every rank must call it (the FSDP2 gathers are collectives).
        """
        if self.sleep_mode:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # hand the training allocator's cached blocks back before vLLM maps memory
            self.llm.wake_up(tags=["weights"])
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        n = 0
        for name, tensor in full_named_parameters(policy, self.weights_dtype):
            model.load_weights([(name, tensor)])
            n += 1
        self.llm.reset_prefix_cache()
        return n

    def generate(self, policy: nn.Module, prompt_rows: list[list[int]], spec: SamplingSpec) -> list[list[int]]:
        """Response token ids per prompt, sampled from `policy`'s current weights (loaded first)."""
        self.load_policy(policy)
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_rows),)).tolist()
        params = [self.make_sampling_params(**sampling_fields(spec, seed)) for seed in seeds]
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate([{"prompt_token_ids": list(row)} for row in prompt_rows],
                                        sampling_params=params, use_tqdm=False)
        finally:
            self.sleep()
        return [list(out.outputs[0].token_ids) for out in outputs]

    def sleep(self) -> None:
        """Release the weights and the KV cache (level 2) when sleep mode is on; the next rollout reloads both."""
        if self.sleep_mode:
            self.llm.sleep(level=2)


def rollout_engine(settings, model_dir: str | Path, accelerator, *, trust_remote_code: bool = False
                   ) -> VLLMRolloutEngine | None:
    """PPO's rollout engine for `settings` (a ``PPOConfig``): vLLM when wanted, else None (HF ``generate``)."""
    from rlmt.train.runtime import use_bf16, vllm_wanted

    ro = settings.rollout
    if not vllm_wanted(ro.use_vllm):
        return None
    engine = VLLMRolloutEngine.start(
        model_dir, gpu_memory_utilization=ro.vllm_gpu_memory_utilization, max_model_len=ro.context_length,
        sleep_mode=ro.vllm_enable_sleep_mode, max_num_seqs=settings.generation_batch_size,
        seed=settings.seed * 1_000 + accelerator.process_index,
        dtype="bfloat16" if use_bf16(settings.bf16) else "float32", trust_remote_code=trust_remote_code)
    accelerator.wait_for_everyone()  # ranks finish building their engines before the first collective
    return engine


def _launcher_env() -> None:
    """The variables vLLM's external launcher reads, from the job's process group (as TRL's colocate mode
    sets them); a single process gets rank 0 of 1 and a free local port."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        os.environ["RANK"] = str(dist.get_rank())
        os.environ["WORLD_SIZE"] = str(dist.get_world_size())
        os.environ.setdefault("LOCAL_RANK", str(dist.get_rank() % max(torch.cuda.device_count(), 1)))
    else:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "localhost")
    if not os.environ.get("MASTER_PORT"):
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
