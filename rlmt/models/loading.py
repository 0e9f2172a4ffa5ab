"""Loading models safely: safetensors only, remote code only when a config names the model.

Every stage loads policies and reward models through these functions, so the same
``from_pretrained`` path serves a tiny test model and Llama-3.1-8B on a cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class UnsafeWeightsError(RuntimeError):
    """A model directory whose weights are not (only) safetensors."""


def check_safetensors(model_dir: str | Path) -> list[Path]:
    """The directory's safetensors files; raise if there are none or pickled weights sit beside them."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory not found: {model_dir}")
    safe = sorted(model_dir.glob("*.safetensors"))
    unsafe = sorted(p for p in model_dir.iterdir() if p.suffix in UNSAFE_WEIGHT_SUFFIXES and "training_args" not in p.name
                    and p.name not in ("optimizer.pt", "scheduler.pt", "rng_state.pth"))
    if not safe:
        found = ", ".join(p.name for p in unsafe) or "no weight files"
        raise UnsafeWeightsError(f"{model_dir}: no *.safetensors weights ({found}); rlmt loads safetensors only. "
                                 "Convert the checkpoint with safetensors first.")
    if unsafe:
        raise UnsafeWeightsError(f"{model_dir}: pickled weight files beside the safetensors ({', '.join(p.name for p in unsafe)}); "
                                 "remove them so that nothing can load them by accident")
    return safe


def local_rank() -> int:
    """This process's index on its node under a launcher (``LOCAL_RANK``, set by accelerate/torchrun), else 0."""
    import os

    value = os.environ.get("LOCAL_RANK", "0") or "0"
    if not value.isdigit():
        raise ValueError(f"LOCAL_RANK must be a non-negative integer, got {value!r}")
    return int(value)


def resolve_device(device: str = "auto") -> str:
    """'auto': this rank's GPU (``cuda:<LOCAL_RANK>``) when CUDA is available, else 'cpu'; a bare
    'cuda' also means this rank's GPU, so eight ranks on a node never all load onto GPU 0."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local_rank()}"
    return device


def resolve_dtype(dtype: str | None, device: str):
    """'auto' -> bf16 on a GPU that supports it, fp32 on CPU."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False, padding_side: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if padding_side:
        tok.padding_side = padding_side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model_dir: str | Path, *, device: str = "auto", dtype: str | None = "auto",
                   trust_remote_code: bool = False, **kwargs: Any):
    """A causal LM from a local directory, safetensors only, on `device` ('auto': this rank's GPU, else CPU).

    Loaded after a trainer's arguments under a DeepSpeed ZeRO-3 launcher config, transformers
    partitions the weights as they load (``zero3_init_flag``); such a model is left where
    DeepSpeed put its shards.
    """
    from transformers import AutoModelForCausalLM

    check_safetensors(model_dir)
    device = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code,
        dtype=resolve_dtype(dtype, device), **kwargs)
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return model  # partitioned as it loaded (a trainer's ZeRO-3 config is known); DeepSpeed places the shards
    return model.to(device)


def load_reward_model(model_dir: str | Path, *, device: str = "auto", dtype: str | None = "auto",
                      trust_remote_code: bool = False, **kwargs: Any):
    """A sequence-classification reward model giving one scalar per input; safetensors only, in eval mode.

    Either a one-label head (the scalar is ``logits[:, 0]``: Skywork and most Bradley-Terry RMs) or,
    for a model that brings its own code (``trust_remote_code``, named in config), an output with
    a scalar ``score`` field (ArmoRM: 19 objective rewards in ``logits``, their gated mix in
    ``score``). :func:`reward_scalars` reads either.
    """
    from transformers import AutoModelForSequenceClassification

    check_safetensors(model_dir)
    device = resolve_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), use_safetensors=True, trust_remote_code=trust_remote_code,
        dtype=resolve_dtype(dtype, device), **kwargs)
    if model.config.num_labels != 1 and not trust_remote_code:
        raise ValueError(f"{model_dir}: a reward model needs exactly one label, found {model.config.num_labels} "
                         "(a model with its own modelling code and a scalar `score` output, like ArmoRM, needs "
                         "trust_remote_code: true in its config entry)")
    return model.to(device).eval()


def reward_scalars(output: Any, model_dir: str | Path = "reward model"):
    """One score per input from a reward model's forward output: its ``score`` field when it has
    one, else the single logit."""
    batch = output.logits.shape[0]
    score = getattr(output, "score", None)
    if score is not None:
        if score.numel() != batch:
            raise ValueError(f"{model_dir}: `score` has shape {tuple(score.shape)}, expected one value per input")
        return score.reshape(batch)
    if output.logits.shape[-1] != 1:
        raise ValueError(f"{model_dir}: the model gives {output.logits.shape[-1]} logits per input and no `score`; "
                         "rlmt needs one scalar reward per input")
    return output.logits[:, 0]
