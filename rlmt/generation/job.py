"""One generation job as a pipeline rule runs it: settings from the config, a prompt file in,
``generations.jsonl`` out.

The sampling settings are ``generation.sampling``, replaced by the benchmark's own
``evaluation.benchmarks.<bench>.sampling`` when it has one; the token budget follows the model's
thinking format (8,192 new tokens for a thinking model, 4,096 otherwise, in the paper). Explicit
arguments (a backend, a token budget) override the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmt.generation.base import GenerationError, SamplingParams
from rlmt.generation.files import generate_file, generation_stats, read_generations, read_prompts
from rlmt.thinking import FORMATS, ThinkingFormat


@dataclass
class GenerationJob:
    """What a finished job reports: where the rows are, the settings used, counts worth logging."""

    out: Path
    settings: dict[str, Any]
    stats: dict[str, float]
    samples: list[dict]


def local_generator_options(gen_cfg, device: str) -> dict[str, Any]:
    """What a local backend (transformers, vLLM) is built with from the config's ``generation`` section."""
    options: dict[str, Any] = {"device": device, "batch_size": gen_cfg.batch_size}
    if gen_cfg.dtype != "auto":
        options["dtype"] = gen_cfg.dtype
    return options


def run_generation_job(model: str | Path, prompts: str | Path, out: str | Path, *, config=None, bench: str | None = None,
                       backend: str | None = None, max_new_tokens: int | None = None, fmt_name: str | None = None,
                       base_url: str | None = None, progress: bool = True, n_samples_logged: int = 5) -> GenerationJob:
    """Generate `prompts` (JSONL/parquet of {id, messages}) with `model` into `out`, resumably.

    `config` is a loaded ``RLMTConfig`` (None: the built-in defaults). `fmt_name` names the
    thinking format for an HTTP model (``warm-think``, ``zero-think`` ...); a local model's format
    comes from its directory.
    """
    from rlmt.config import GenerationConfig

    gen_cfg = config.generation if config is not None else GenerationConfig()
    sampling = gen_cfg.sampling
    if config is not None and bench is not None:
        spec = config.evaluation.benchmarks.get(bench)
        if spec is not None and spec.sampling is not None:
            sampling = spec.sampling
    device = config.device if config is not None else "auto"
    backend = backend or gen_cfg.backend
    base_url = base_url or gen_cfg.base_url
    if fmt_name is not None and fmt_name not in FORMATS:
        raise GenerationError(f"unknown thinking format {fmt_name!r}; allowed: {sorted(FORMATS)}")
    fmt = FORMATS[fmt_name] if fmt_name else None
    is_local = backend != "openai" and not (backend == "auto" and base_url)
    if is_local:
        if not Path(model).is_dir():
            raise GenerationError(f"model directory not found: {model}")
        fmt = fmt or ThinkingFormat.load(model)
    fmt = fmt or FORMATS["warm-nothink"]
    params = SamplingParams.for_format(fmt, sampling, max_new_tokens=max_new_tokens)
    items = read_prompts(prompts)
    options = local_generator_options(gen_cfg, device)
    if not is_local:
        options = {"base_url": base_url, "api_key_env": gen_cfg.api_key_env, "concurrency": gen_cfg.concurrency}
    path = generate_file(model, items, out, params, backend=backend, fmt=fmt, progress=progress, **options)
    rows = read_generations(path)
    # rlmt.tracking.redact drops every parameter whose name contains "token" (it might be a
    # credential), so the token budget is logged as "sampling.max_new".
    sampled = {("max_new" if k == "max_new_tokens" else k): v for k, v in params.to_dict().items()}
    settings = {"model": str(model), "backend": backend, "format": fmt.name, "bench": bench, "n_items": len(items),
                **{f"sampling.{k}": v for k, v in sampled.items()}}
    if not is_local:
        settings.update({"base_url": base_url, "api_key_env": gen_cfg.api_key_env, "concurrency": gen_cfg.concurrency})
    else:
        settings.update({"device": device, "batch_size": gen_cfg.batch_size})
    return GenerationJob(out=path, settings=settings, stats=generation_stats(rows), samples=rows[:n_samples_logged])
