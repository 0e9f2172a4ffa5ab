"""Choosing and building a backend by name.

``auto`` picks the HTTP backend when a ``base_url`` is given, vLLM when it is installed and the
device is not the CPU, and transformers otherwise, so one config serves a laptop and a GPU
cluster. Backends are imported here lazily: ``import rlmt.generation`` pulls in neither torch nor
vllm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from rlmt.generation.base import Generator

BackendName = Literal["auto", "transformers", "vllm", "openai"]
BACKENDS = ("auto", "transformers", "vllm", "openai")


def resolve_backend(backend: str, *, device: str = "auto", base_url: str | None = None) -> str:
    """The concrete backend that `backend` means on this machine."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r}; allowed: {list(BACKENDS)}")
    if backend != "auto":
        return backend
    if base_url:
        return "openai"
    from rlmt.generation.vllm_backend import vllm_available

    if device != "cpu" and vllm_available():
        import torch

        if torch.cuda.is_available():
            return "vllm"
    return "transformers"


def make_generator(backend: BackendName | str, model: str | Path, *, device: str = "auto", batch_size: int = 16,
                   base_url: str | None = None, api_key_env: str | None = None, concurrency: int = 16,
                   cache_path: str | Path | None = None, **options: Any) -> Generator:
    """Build a generator.

    `model` is a model directory for the local backends and the endpoint's model name for
    ``openai``. `options` go to the backend's constructor (e.g. ``dtype`` for transformers,
    ``max_model_len`` for vLLM, ``max_retries``/``timeout_s``/``backoff_s`` for HTTP).
    """
    name = resolve_backend(backend, device=device, base_url=base_url)
    if name == "transformers":
        from rlmt.generation.transformers_backend import TransformersGenerator

        return TransformersGenerator(model, device=device, batch_size=batch_size, **options)
    if name == "vllm":
        from rlmt.generation.vllm_backend import VLLMGenerator

        return VLLMGenerator(model, device=device, **options)
    from rlmt.generation.openai_backend import OpenAIGenerator

    return OpenAIGenerator(str(model), base_url=base_url, api_key_env=api_key_env, concurrency=concurrency,
                           cache_path=cache_path, **options)
