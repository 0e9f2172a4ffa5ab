"""What every trainer decides the same way: precision, batch geometry, vLLM, and reading prompt files.

Kept in one place so SFT, GRPO and DPO cannot disagree on, e.g., how a global batch of 64
prompts is split into micro-batches and accumulation steps on N devices.
"""

from __future__ import annotations

import os
from pathlib import Path


class TrainingSetupError(ValueError):
    """Settings or inputs that cannot make a valid training run."""


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def use_bf16(bf16: bool | None) -> bool:
    """Whether a trainer computes in bf16. None: exactly when a CUDA GPU supports it (CPU runs in fp32).

    True on CPU: bf16 autocast over fp32 weights (the optimizer updates fp32 values), which is 2x faster
    where the CPU has AMX or AVX512-BF16 (measured on SmolLM2-135M here: forward + backward + AdamW of 8 x 450
    tokens, 8.8 s against 19-21 s) and slower, but still correct, where it has neither."""
    import torch

    if bf16 is None:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return bool(bf16)


def weights_dtype(bf16: bool | None) -> str:
    """The dtype a trainer loads its policy in: bf16 on a GPU when computing in bf16 (DeepSpeed and FSDP2 keep
    fp32 master copies), else fp32 (on CPU, autocast computes in bf16 and the optimizer steps fp32 weights)."""
    import torch

    return "bfloat16" if use_bf16(bf16) and torch.cuda.is_available() else "float32"


def precision_args(bf16: bool | None) -> dict[str, bool]:
    """transformers TrainingArguments' precision keys: bf16 on CPU needs ``use_cpu`` (its check for a GPU)."""
    import torch

    on = use_bf16(bf16)
    return {"bf16": on, **({"use_cpu": True} if on and not torch.cuda.is_available() else {})}


def accumulation_steps(global_batch: int, per_device: int, what: str = "global_batch_size",
                       world: int | None = None) -> int:
    """Gradient-accumulation steps so that per_device x world x steps == global_batch (world: $WORLD_SIZE)."""
    world = world_size() if world is None else world
    per_step = per_device * world
    if global_batch % per_step:
        raise TrainingSetupError(f"{what}={global_batch} is not divisible by per_device_train_batch_size "
                                 f"({per_device}) x devices ({world})")
    return global_batch // per_step


def vllm_wanted(use_vllm: bool | None) -> bool:
    """Whether rollouts sample with vLLM. None: on a GPU machine yes, on a CPU machine no.

    On a GPU machine without vllm, None is an error, not a quiet fall-back to transformers'
    ``generate``: that decodes an 8B policy token by token through the sharded model, many times
    slower, and a run sized for vLLM would overrun its time limit hours in. Asking for it
    explicitly (``rollout.use_vllm: false``) is allowed.
    """
    import importlib.util

    import torch

    installed = importlib.util.find_spec("vllm") is not None
    if use_vllm is None:
        if not torch.cuda.is_available():
            return False
        if not installed:
            raise TrainingSetupError("rollout.use_vllm is unset (auto) and this machine has a GPU, but vllm is not "
                                     "installed: install it (pip install 'rlmt[vllm]'), or set rollout.use_vllm: "
                                     "false to roll out with transformers' generate (far slower)")
        return True
    if use_vllm and not installed:
        raise TrainingSetupError("rollout.use_vllm: true, but vllm is not installed (pip install 'rlmt[vllm]')")
    return use_vllm


def read_prompt_table(path: str | Path) -> list[dict]:
    """Rows of a mixture parquet (``id``, ``messages`` ending with a user turn, ...), checked."""
    import polars as pl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    df = pl.read_parquet(path)
    missing = {"id", "messages"} - set(df.columns)
    if missing:
        raise TrainingSetupError(f"{path}: missing column(s) {sorted(missing)}; a mixture has id, messages, source, n_tokens")
    rows = df.select("id", "messages").to_dicts()
    for r in rows:
        msgs = r["messages"]
        if not msgs or msgs[-1].get("role") != "user":
            raise TrainingSetupError(f"{path}: row {r['id']!r}: messages must end with a user turn")
        r["messages"] = [{"role": m["role"], "content": m["content"]} for m in msgs]
    if not rows:
        raise TrainingSetupError(f"{path}: no prompts")
    return rows


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """Length of a prompt as the policy sees it (its chat template with the generation prompt)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)
