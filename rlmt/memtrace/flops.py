"""FLOPs of a traced step: ``torch.utils.flop_counter``'s formulas, counted without its module hooks.

:class:`FlopCount` counts each dispatched op with the formula ``FlopCounterMode`` registers for it
(``torch.utils.flop_counter.flop_registry``, plus the formulas below). It is not ``FlopCounterMode``
itself because that mode tracks the module hierarchy with hooks on every module's outputs, which keep
tensors alive in the backward pass: traced under it, a 2-layer Llama-3.1-8B GRPO step showed 1.95 GiB
more activations (and a peak not affine in depth), so the memory it traced was not the step's.

Formulas added for a trace on CPU fake tensors:

- ``_scaled_dot_product_flash_attention_for_cpu`` (and its backward): the CPU kernel the trace
  dispatches to where a GPU runs flash or memory-efficient attention. Counted with torch's own SDPA
  formulas (``sdpa_flop_count``: the full S x S score matrix, causal masking not discounted, the
  convention torch applies to the GPU kernels too).
- ``addmm`` with ``out=``/``out_dtype=`` (the fp32-accumulating product TRL's chunked LM head runs on a
  GPU): torch's registered formula does not take those keywords; 2 x m x n x k as for any addmm. And the
  in-place ``addmm_`` (the same product in TRL's CPU fallback), which torch's registry does not count.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter

aten = torch.ops.aten


def _raw(fn):
    fn._get_raw = True  # FlopCounterMode passes the op's own arguments (not shapes) to a raw formula
    return fn


@_raw
def _cpu_flash_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query.shape, key.shape, value.shape)


@_raw
def _cpu_flash_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


@_raw
def _addmm(bias, mat1, mat2, *args, out_val=None, **kwargs) -> int:
    m, k = mat1.shape
    _, n = mat2.shape
    return 2 * m * n * k


def formulas() -> dict:
    """The formulas torch's registry lacks (a ``custom_mapping`` for FlopCounterMode too)."""
    return {
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_backward,
        aten.addmm: _addmm,
        aten.addmm_: _addmm,
    }


class FlopCount:
    """Context manager: FLOPs of the ops dispatched inside (``total``), by ``FlopCounterMode``'s formulas."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        registry = {**flop_counter.flop_registry, **formulas()}
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += int(formula(*args, **kwargs, out_val=out))
                return out

        self.total = 0
        self._mode = _Mode()

    def __enter__(self) -> "FlopCount":
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
