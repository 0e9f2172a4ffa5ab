"""Generation with vLLM, the paper's evaluation engine, when it is installed (GPU machines).

``vllm`` is imported only when a :class:`VLLMGenerator` is built, never by ``import
rlmt.generation``: the CPU environment does not have it. Prompts are rendered with the policy's
chat template here (the same :func:`render_prompt_ids` the transformers backend uses) and handed
to ``LLM.generate`` as token ids, so both backends see identical prompts.

The mapping of our :class:`SamplingParams` onto vLLM's is :func:`vllm_sampling_kwargs`, a plain
function so that it is tested without vLLM: ``max_new_tokens -> max_tokens``, a per-request
``seed``, ``stop`` with ``include_stop_str_in_output=True`` (the matched ``</response>`` stays in
the text, as the backend contract wants) and ``skip_special_tokens=True``.
"""

from __future__ import annotations

import importlib.util
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


class VLLMGenerator(Generator):
    backend = "vllm"

    def __init__(self, model_dir: str | Path, *, max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, dtype: str = "auto", seed: int = 0, chunk_size: int = 2048,
                 progress: bool = True):
        from rlmt.models.loading import check_safetensors

        check_safetensors(model_dir)  # before vllm sees the dir: it would read pickled weights too
        if not vllm_available():
            raise GenerationError("backend 'vllm' asked for, but the vllm package is not installed "
                                  "(pip install 'rlmt[vllm]' on a GPU machine, or use backend 'transformers')")
        from vllm import LLM

        self.model_dir = Path(model_dir)
        self.progress = progress
        self.chunk_size = chunk_size  # vLLM schedules continuously; large chunks keep it busy
        self.llm = LLM(model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=dtype, seed=seed,
                       trust_remote_code=False, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[Messages], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSamplingParams

        inputs = [{"prompt_token_ids": render_prompt_ids(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(inputs, VLLMSamplingParams(**vllm_sampling_kwargs(params)), use_tqdm=self.progress)
        return [[completion_from_vllm(o.text, o.token_ids, o.finish_reason, params.stop) for o in req.outputs]
                for req in outputs]

    def close(self) -> None:
        self.llm = None
