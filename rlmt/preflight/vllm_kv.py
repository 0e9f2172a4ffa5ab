"""vLLM's KV-cache budget, by vLLM's own rule, for a colocated rollout engine.

vLLM (V1 engine) sizes its KV cache at start-up:

    requested = total GPU memory x gpu_memory_utilization
    kv budget = requested - (weights + the profiling run's peak activations + non-torch memory)

and refuses to start when one request of ``max_model_len`` tokens does not fit the budget ("To serve at least
one request with the models's max seq len (131072), (16.00 GiB KV cache is needed, which is larger than the
available KV cache memory ..."). A request of L tokens holds L x (layers x KV heads x head dim x 2 (K and V) x
dtype bytes) of cache. The sequences it decodes at once are at most ``budget / (bytes per token x max_model_len)``
when every sequence may reach the full length; a rollout with more sequences per engine runs in waves.

What this module cannot see, stated as named terms: the profiling peak is estimated from the model's shapes (one
decoder layer's MLP and attention intermediates over ``max_num_batched_tokens`` tokens, plus the sampler's fp32
logits of ``max_num_seqs`` rows: TRL's colocated engine profiles with 4,096 batched tokens), and vLLM's non-torch
memory (CUDA graphs, NCCL) is a constant ``NON_TORCH_GIB``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024 ** 3
NON_TORCH_GIB = 0.5  # CUDA graphs and communicator buffers vLLM allocates outside torch's allocator
TRL_MAX_NUM_BATCHED_TOKENS = 4096  # trl.generation.vllm_generation: the colocated engine's profiling batch


@dataclass(frozen=True)
class KVBudget:
    """One colocated vLLM engine's memory, by vLLM's start-up rule (bytes)."""

    requested: float
    weights: float
    profile_peak: float
    non_torch: float
    bytes_per_token: int
    max_model_len: int
    sequences_needed: int  # sequences one engine decodes per rollout (TRL: max_num_seqs)

    @property
    def kv_budget(self) -> float:
        return self.requested - self.weights - self.profile_peak - self.non_torch

    @property
    def one_request(self) -> float:
        """KV bytes of one request of max_model_len tokens."""
        return float(self.bytes_per_token * self.max_model_len)

    @property
    def fits_one_request(self) -> bool:
        return self.kv_budget >= self.one_request

    @property
    def sequences_at_once(self) -> int:
        """Full-length sequences the cache holds at once (vLLM's 'maximum concurrency')."""
        return max(0, math.floor(self.kv_budget / self.one_request))

    @property
    def waves(self) -> int:
        """Rounds a rollout of sequences_needed full-length sequences takes (1: all at once)."""
        if self.sequences_at_once == 0:
            return 0
        return math.ceil(self.sequences_needed / self.sequences_at_once)

    def describe(self) -> str:
        g = GIB
        head = (f"max_model_len {self.max_model_len:,}: {self.one_request / g:.2f} GiB per request; KV budget "
                f"{self.kv_budget / g:.1f} GiB = {self.requested / g:.1f} share - {self.weights / g:.1f} weights - "
                f"{self.profile_peak / g:.1f} profiling peak - {self.non_torch / g:.1f} non-torch")
        if not self.fits_one_request:
            return head + "; one request does not fit: vLLM refuses to start"
        return head + f"; {self.sequences_at_once} full-length sequences at once for {self.sequences_needed} per rollout"


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """K and V of every layer for one token."""
    return layers * kv_heads * head_dim * 2 * dtype_bytes


def profile_peak_bytes(hidden: int, intermediate: int, vocab: int, *, max_num_batched_tokens: int,
                       max_num_seqs: int, dtype_bytes: int = 2) -> float:
    """vLLM's profiling run, estimated: one layer's largest live intermediates over the batched tokens (the MLP's
    gate and up projections, 2 x intermediate, with the residual stream, q/k/v and attention output, ~4 x hidden)
    plus the sampler's fp32 logits and probabilities of max_num_seqs rows."""
    layer = max_num_batched_tokens * (2 * intermediate + 4 * hidden) * dtype_bytes
    sampler = max_num_seqs * vocab * 4 * 2
    return float(layer + sampler)


def kv_budget(*, gpu_bytes: float, utilization: float, params: int, layers: int, kv_heads: int, head_dim: int,
              hidden: int, intermediate: int, vocab: int, max_model_len: int, sequences_needed: int,
              dtype_bytes: int = 2, max_num_batched_tokens: int = TRL_MAX_NUM_BATCHED_TOKENS) -> KVBudget:
    """The budget of one engine holding the whole model (tensor parallel 1) in `dtype_bytes` per weight."""
    return KVBudget(
        requested=gpu_bytes * utilization,
        weights=float(params * dtype_bytes),
        profile_peak=profile_peak_bytes(hidden, intermediate, vocab, max_num_batched_tokens=max_num_batched_tokens,
                                        max_num_seqs=sequences_needed, dtype_bytes=dtype_bytes),
        non_torch=NON_TORCH_GIB * GIB,
        bytes_per_token=kv_bytes_per_token(layers, kv_heads, head_dim, dtype_bytes),
        max_model_len=max_model_len,
        sequences_needed=sequences_needed,
    )
