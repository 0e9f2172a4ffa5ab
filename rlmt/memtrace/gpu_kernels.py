"""TRL's chunked log-prob LM head with the memory of its GPU kernels, for a trace that runs on a CPU.

TRL 1.x computes per-token log-probs and entropies without materialising the ``[tokens, vocab]``
logits (``trl.kernels.chunked_logprob.ChunkedLogProbFunction``): it projects tiles of at most
4,096 tokens x 32,768 vocabulary entries into one preallocated buffer and folds each tile into
running statistics. On a GPU the fold is a Triton kernel that allocates nothing and the gradient
GEMMs accumulate into fp32 with ``addmm(..., out_dtype=float32, out=acc)``, which allocates nothing
either. On a CPU the same function folds with torch ops (``tile.float()``, ``exp``, ... each a full
fp32 tile, hundreds of MiB) and upcasts both GEMM operands to fp32 first.

:func:`gpu_kernel_memory` makes the CPU trace allocate what the GPU kernels allocate: the folds write
into the tile and the statistics in place (the values are not needed, only the memory), and the
accumulating GEMM is the GPU's own call. Everything else in the head (the tile buffer, the fp32
gradient accumulators, the statistics, the ``[tokens, hidden]`` slices) is TRL's code as it runs.
"""

from __future__ import annotations

import contextlib

import torch


def _fold_in_place(tile, *args, **kwargs) -> None:
    """The Triton fold's memory: none (it reads the tile and updates preallocated outputs in place)."""


def _addmm_fp32_like_cuda(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` accumulating in fp32 without a product tensor (TRL's CUDA branch of ``_addmm_fp32``)."""
    torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


@contextlib.contextmanager
def gpu_kernel_memory():
    """Inside, TRL's chunked log-prob head allocates what its GPU kernels allocate (module docstring)."""
    from trl.kernels import chunked_logprob as head

    saved = head._forward_tile, head._backward_tile, head._addmm_fp32
    head._forward_tile, head._backward_tile, head._addmm_fp32 = _fold_in_place, _fold_in_place, _addmm_fp32_like_cuda
    try:
        yield
    finally:
        head._forward_tile, head._backward_tile, head._addmm_fp32 = saved
