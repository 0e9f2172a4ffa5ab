"""PPO's checkpoint contents: each rank writes its own shard of the training state; the policy is exported.

A checkpoint ``OUT/step-<N>/`` (the layout and its crash safety are :mod:`rlmt.train.checkpoints`'):

    model.safetensors, config.json, generation_config.json, tokenizer files
                        the policy as a model dir, in its compute dtype (bf16 on GPUs, fp32 in an fp32
                        run): what ``final/`` copies and evaluation loads
    training_state/     ``torch.distributed.checkpoint`` (DCP): ``.metadata`` plus one
                        ``__<rank>_0.distcp`` per rank, holding that rank's shard of the fp32 policy,
                        critic and AdamW state; a resume reads it back, each rank its own shard
    critic/             ``critic.json`` (the critic's kind) and its head as safetensors
    trainer_state.json  global step and log history (+ checkpoint.json, written by ``checkpoints``)

Why (issue 28, defect 6): gathering the whole fp32 policy, critic and Adam state of an 8B run
(~186 GB) to one process while the seven others wait in a barrier outlives NCCL's watchdog. Here no
rank gathers the training state: every rank writes its shard in parallel (~23 GB each on 8 GPUs).
Only the exported policy is gathered, one tensor at a time, cast to the export dtype as it arrives
on the main process (16 GB for an 8B policy in bf16).

Unsharded runs (one process, DDP) take the same path: DCP writes a replicated tensor once.

DCP stores its index (``.metadata``) and non-tensor values (learning rates, Adam's betas) as
pickles and would unpickle them unrestricted. A resume reads them only after they pass
restricted unpicklers (the index: the DCP metadata classes and torch's size/dtype types; the
values: ``torch.load(weights_only=True)``), as the rest of rlmt reads safetensors only.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

TRAINING_STATE_DIR = "training_state"
DCP_METADATA_FILE = ".metadata"


# ----------------------------------------------------------------------------- the training state (DCP)


def save_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write model and optimizer state to `path`, every rank its own shard (collective: every rank calls it).

    `model` and `optimizer` unwrapped (no DDP or accelerate wrapper), so a resume that loads into the
    plain modules finds the same names.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, storage_writer=dcp.FileSystemWriter(str(path)))


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the state :func:`save_training_state` wrote into `model` and `optimizer` (collective).

    Under FSDP2 each rank reads only the pieces of its own shards; the optimizer's state is created
    first (zero moments, as before its first step) so that DCP has tensors to read into.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = Path(path)
    if not (path / DCP_METADATA_FILE).is_file():
        raise FileNotFoundError(f"{path.parent}: no sharded training state ({path.name}/{DCP_METADATA_FILE}); a PPO "
                                "checkpoint from before sharded checkpoints (optimizer.pt) cannot be resumed: move "
                                "the run's step-* dirs away to start it over")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, storage_reader=_CheckedReader(str(path)), planner=_CheckedLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


# ----------------------------------------------------------------------------- the exported policy


def export_dtype(bf16: bool) -> torch.dtype:
    """The dtype of the exported policy: bf16 when the run computes in bf16, else fp32 (CPU tests)."""
    return torch.bfloat16 if bf16 else torch.float32


def gathered_state(module: nn.Module, dtype: torch.dtype, *, keep: bool) -> dict[str, torch.Tensor] | None:
    """`module`'s full state dict on the CPU in `dtype` (floating tensors) where `keep`, else None.

    Collective when the module is sharded: every rank calls it. Each FSDP2 shard is gathered on its
    own (``full_tensor``), cast and copied to the CPU where kept, and dropped before the next: no rank
    holds more than one full fp32 tensor at a time besides the kept result.
    """
    from torch.distributed.tensor import DTensor

    kept: dict[str, torch.Tensor] = {}
    for name, value in module.state_dict().items():
        full = value.full_tensor() if isinstance(value, DTensor) else value
        if keep:
            kept[name] = full.detach().to("cpu", dtype if full.is_floating_point() else full.dtype).contiguous()
        del full
    return kept if keep else None


def write_policy(policy, weights: dict[str, torch.Tensor], out: str | Path, dtype: torch.dtype) -> None:
    """The policy as a model dir (safetensors) from its gathered `weights`, its config naming `dtype`.

    ``save_pretrained`` records the dtype of the module's own parameters (the fp32 master weights),
    so the config is written again with the dtype of the weights in the file.
    """
    import copy

    policy.save_pretrained(str(out), safe_serialization=True, state_dict=weights)
    config = copy.deepcopy(policy.config)
    config.dtype = dtype
    config.save_pretrained(str(out))


# ----------------------------------------------------------------------------- restricted reading


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` index only: the classes DCP defines for it, torch sizes, dtypes and
    layouts, and the checkpoint's path."""

    _DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
    _ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"),
                ("pathlib", "PurePosixPath")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED or (module == "torch" and _is_torch_type(name)) \
                or (module in self._DCP_MODULES and _defined_class(module, name)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"DCP metadata refers to {module}.{name}, which a checkpoint index never holds")


def _is_torch_type(name: str) -> bool:
    """torch dtypes, layouts and memory formats, as pickled by name (``torch.bfloat16``, ``torch.strided``)."""
    return isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format))


def _defined_class(module: str, name: str) -> bool:
    """A class `module` itself defines (a dataclass or enum of DCP's index), not a name it imported."""
    import importlib

    value = getattr(importlib.import_module(module), name, None)
    return isinstance(value, type) and value.__module__ == module


class _CheckedReader(FileSystemReader):
    """DCP's file reader, whose index is unpickled only after the restricted unpickler accepted it."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        with (Path(self.path) / DCP_METADATA_FILE).open("rb") as fh:
            _MetadataUnpickler(fh).load()
        return super().read_metadata(*args, **kwargs)


class _CheckedLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, whose non-tensor values are unpickled only if ``weights_only`` loading accepts them."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        torch.load(value, weights_only=True)  # raises on anything but tensors and plain values
        value.seek(0)
        super().load_bytes(read_item, value)
