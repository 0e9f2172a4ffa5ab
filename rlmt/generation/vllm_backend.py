"""Generation with vLLM, the paper's evaluation engine, when it is installed (GPU machines).

``vllm`` is imported only when a :class:`VLLMGenerator` is built, never by ``import
rlmt.generation``: the CPU environment does not have it. Prompts are rendered with the policy's
chat template here (the same :func:`render_prompt_ids` the transformers backend uses) and handed
to ``LLM.generate`` as token ids, so both backends see identical prompts.

The mapping of our :class:`SamplingParams` onto vLLM's is :func:`vllm_sampling_kwargs`, a plain
function so that it is tested without vLLM: ``max_new_tokens -> max_tokens``, a per-request
``seed``, ``stop`` with ``include_stop_str_in_output=True`` (the matched ``</response>`` stays in
the text, as the backend contract wants) and ``skip_special_tokens=True``.

The engine's context (``max_model_len``) is never the model's own (131,072 tokens for Llama-3.1:
vLLM refuses to start unless one such sequence's KV cache fits): it is the longest prompt of the job
plus ``max_new_tokens`` (:func:`engine_context`), known when :meth:`VLLMGenerator.prepare` sees the
job's prompts, so the engine starts there (or at the first :meth:`~VLLMGenerator.generate`).

Under a launcher each process samples on its own GPU (``device="cuda:<N>"``): vLLM's engine runs
in a process of its own whose worker takes the first visible GPU, so that process is started with
only this rank's GPU visible. :meth:`VLLMGenerator.close` shuts the engine down and empties the
CUDA cache, so that a model loaded next (DPO's reward model) gets the memory back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from rlmt.generation.base import Completion, GenerationError, Generator, Messages, SamplingParams, cut_at_stop
from rlmt.generation.chat import render_prompt_ids


def vllm_available() -> bool:
    """Whether vllm can be imported (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_sampling_kwargs(params: SamplingParams) -> dict:
    """Keyword arguments for ``vllm.SamplingParams`` equivalent to `params`."""
    return {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "include_stop_str_in_output": True,
        "skip_special_tokens": True,
    }


def completion_from_vllm(text: str, token_ids, finish_reason: str | None, stops: tuple[str, ...]) -> Completion:
    """Our Completion from one ``vllm.CompletionOutput``: 'length' stays 'length', anything else
    that ended the sequence (EOS, a stop string, a stop token) is 'stop'."""
    text, _ = cut_at_stop(text, stops)
    return Completion(text=text, finish_reason="length" if finish_reason == "length" else "stop",
                      n_tokens=len(token_ids))


def engine_context(prompt_lengths: list[int], max_new_tokens: int, max_model_len: int | None = None) -> int:
    """vLLM's ``max_model_len`` for prompts of `prompt_lengths` tokens and `max_new_tokens` each.

    The longest prompt plus the budget; an explicit `max_model_len` is used as it is, and must hold that.
    """
    needed = max(prompt_lengths, default=0) + max_new_tokens
    if max_model_len is None:
        return needed
    if max_model_len < needed:
        raise GenerationError(f"max_model_len={max_model_len} is shorter than the longest prompt "
                              f"({max(prompt_lengths, default=0)} tokens) + max_new_tokens ({max_new_tokens})")
    return max_model_len


@contextlib.contextmanager
def engine_on_device(device: str):
    """While vLLM starts its engine process: only `device`'s GPU visible to it (``cuda:<N>``; others: as is).

    vLLM's worker takes the first visible GPU, so without this every rank's engine would land on GPU 0.
    The engine process inherits the environment when it is spawned (vLLM spawns it once CUDA is
    initialised); this process's own CUDA context is not affected.
    """
    if not device.startswith("cuda:"):
        yield
        return
    import torch

    index = int(device.split(":", 1)[1])
    saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "VLLM_ENABLE_V1_MULTIPROCESSING")}
    visible = saved["CUDA_VISIBLE_DEVICES"]
    physical = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = physical[index].strip()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # the engine in its own process, which sees that GPU alone
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(self, model_dir: str | Path, *, max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0, chunk_size: int = 2048,
                 progress: bool = True, device: str = "auto"):
        from rlmt.models.loading import check_safetensors, load_tokenizer

        check_safetensors(model_dir)  # before vllm sees the dir: it would read pickled weights too
        if not vllm_available():
            raise GenerationError("backend 'vllm' asked for, but the vllm package is not installed "
                                  "(pip install 'rlmt[vllm]' on a GPU machine, or use backend 'transformers')")
        self.model_dir = Path(model_dir)
        self.progress = progress
        self.chunk_size = chunk_size  # vLLM schedules continuously; large chunks keep it busy
        self.device = device
        self.max_model_len = max_model_len  # None: sized by the job (engine_context)
        self.context: int | None = None  # the running engine's max_model_len
        self._engine_options = dict(dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                                    tensor_parallel_size=tensor_parallel_size)
        # The policy's tokenizer measures the prompts before the engine exists (vLLM loads the same files).
        self.tokenizer = load_tokenizer(self.model_dir)
        self.llm = None

    def _start(self, context: int) -> None:
        from vllm import LLM

        # one GPU per engine (tensor_parallel_size 1): pinned to this rank's; a tensor-parallel engine sees them all
        with engine_on_device(self.device if self._engine_options["tensor_parallel_size"] == 1 else "auto"):
            self.llm = LLM(model=str(self.model_dir), tokenizer=str(self.model_dir), trust_remote_code=False,
                           max_model_len=context, **self._engine_options)
        self.context = context

    def _encode(self, prompts: list[Messages]) -> list[list[int]]:
        return [render_prompt_ids(self.tokenizer, p) for p in prompts]

    def prepare(self, prompts: list[Messages], params: SamplingParams) -> None:
        """Start the engine with the context this job needs (its longest prompt + max_new_tokens)."""
        if self.llm is None:
            self._start(engine_context([len(e) for e in self._encode(prompts)], params.max_new_tokens,
                                       self.max_model_len))

    def generate(self, prompts: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        encoded = self._encode(prompts)
        context = engine_context([len(e) for e in encoded], params.max_new_tokens, self.max_model_len or self.context)
        if self.llm is None:
            self._start(context)
        inputs = [{"prompt_token_ids": ids} for ids in encoded]
        outputs = self.llm.generate(inputs, VLLMSamplingParams(**vllm_sampling_kwargs(params)), use_tqdm=self.progress)
        return [[completion_from_vllm(o.text, o.token_ids, o.finish_reason, params.stop) for o in req.outputs]
                for req in outputs]

    def close(self) -> None:
        """Shut the engine down (its process and the GPU memory it holds) and empty this process's CUDA cache.

        Dropping the reference is not enough: the engine process keeps its weights and KV cache until it
        is told to stop, and the next model on this GPU (DPO's reward model) would not fit beside it.
        """
        import gc

        llm, self.llm = self.llm, None
        if llm is not None:
            engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(engine_core, "shutdown", None)
            if callable(shutdown):
                shutdown()
            del llm, engine_core, shutdown
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
