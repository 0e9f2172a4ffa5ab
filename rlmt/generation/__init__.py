"""Generation backends: one interface, three engines (transformers, vLLM, OpenAI-compatible HTTP).

    from rlmt.generation import SamplingParams, make_generator, generate_file

    params = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=4096, n=1, seed=0)
    gen = make_generator("auto", model_dir, batch_size=16)
    outs = gen.generate(prompts, params)          # list[list[Completion]], n per prompt
    generate_file(model_dir, items, "generations.jsonl", params)   # resumable

Importing this package is cheap: torch, transformers and vllm load only when a backend is built.
"""

from rlmt.generation.backends import BACKENDS, make_generator, resolve_backend
from rlmt.generation.base import Completion, GenerationError, Generator, SamplingParams, cut_at_stop
from rlmt.generation.files import (
    PromptFileError,
    generate_file,
    generation_stats,
    load_done_ids,
    make_row,
    read_generations,
    read_prompts,
)

__all__ = [
    "BACKENDS",
    "Completion",
    "GenerationError",
    "Generator",
    "PromptFileError",
    "SamplingParams",
    "cut_at_stop",
    "generate_file",
    "generation_stats",
    "load_done_ids",
    "make_generator",
    "make_row",
    "read_generations",
    "read_prompts",
    "resolve_backend",
]
