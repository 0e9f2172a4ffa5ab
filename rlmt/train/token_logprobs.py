"""Log-probabilities (and entropies) of response tokens without a batch's full-vocabulary logits.

A causal LM's head turns every position's hidden state into V logits (V = 128,256 for Llama-3.1); for a
PPO batch that is rows x 4,992 x V values, tens of GiB once cast to fp32 for the softmax (issue 28,
defect 2). PPO needs, per response token, only log pi(token) at the sampling temperature, and for the
update its entropy. So for one forward the model's output embedding is replaced by
:class:`ResponseScoringHead`: the transformer body computes the hidden states once, and the head applies
the real LM head to ``chunk_tokens`` response positions at a time, takes the tempered log-softmax in fp32,
gathers the sampled token's log-prob (and the entropy) and drops that chunk's logits before the next.
With gradients on, each chunk is recomputed in the backward pass (``torch.utils.checkpoint``), so no
chunk's logits are kept for the backward either: at most one chunk's fp32 logits exist at any time.

The head is swapped in rather than body and head being called apart, so the model's own ``forward``
runs: FSDP2's root hooks gather the head's (sharded) weight and hook the backward exactly as in any
forward, and DDP sees a normal forward. ``logits_to_keep`` makes the body hand only the response
positions (and the one before them) to the head.

Conventions as in :mod:`rlmt.train.rollout`: position ``t`` of a ``[batch, R]`` result belongs to
response token ``t``, scored from the hidden state at the position before it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
from torch import nn

DEFAULT_CHUNK_TOKENS = 1024


class ResponseScores(NamedTuple):
    logprobs: torch.Tensor        # [B, R] log pi(token) at the temperature
    entropy: torch.Tensor | None  # [B, R] entropy of the tempered distribution (None when not asked for)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, exactly as ``generate`` assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ResponseScoringHead(nn.Module):
    """Stands in for a causal LM's output embedding during one forward (see the module docstring).

    Receives the hidden states of the last ``R + 1`` positions (``logits_to_keep=R + 1``: positions
    ``P-1 .. P+R-1``), scores the first ``R`` of them against `targets` (``[B, R]``, the response tokens)
    and returns ``[B, R, 1]`` (log-probs) or ``[B, R, 2]`` (log-probs, entropies) in place of logits.
    """

    def __init__(self, head: nn.Module, targets: torch.Tensor, temperature: float, chunk_tokens: int,
                 with_entropy: bool):
        super().__init__()
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be at least 1, got {chunk_tokens}")
        self.head = head
        self.targets = targets
        self.temperature = float(temperature)
        self.chunk_tokens = int(chunk_tokens)
        self.with_entropy = with_entropy

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        rows, length = self.targets.shape
        flat_hidden = hidden[:, :length].reshape(rows * length, hidden.shape[-1])
        flat_targets = self.targets.reshape(rows * length)
        recompute = torch.is_grad_enabled() and flat_hidden.requires_grad
        pieces = []
        for start in range(0, rows * length, self.chunk_tokens):
            h, t = flat_hidden[start:start + self.chunk_tokens], flat_targets[start:start + self.chunk_tokens]
            pieces.append(checkpoint(self._score, h, t, use_reentrant=False) if recompute else self._score(h, t))
        return torch.cat(pieces).view(rows, length, -1)

    def _score(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(self.head(hidden).float() / self.temperature, dim=-1)
        token = logp.gather(-1, targets.unsqueeze(-1))
        if not self.with_entropy:
            return token
        return torch.cat([token, -(logp.exp() * logp).sum(-1, keepdim=True)], dim=-1)


@contextmanager
def scoring_head(model: nn.Module, head: ResponseScoringHead) -> Iterator[None]:
    """Use `head` as `model`'s output embedding inside the block; the original comes back afterwards."""
    original = model.get_output_embeddings()
    if original is None:
        raise TypeError(f"{type(model).__name__} has no output embedding to score with")
    model.set_output_embeddings(head)
    try:
        yield
    finally:
        model.set_output_embeddings(original)


def response_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                    temperature: float, *, chunk_tokens: int | None = None, with_entropy: bool = False
                    ) -> ResponseScores:
    """log pi(response token) (and the entropy) at `temperature`, ``[batch, R]``, one LM-head chunk at a time.

    Equal, within float rounding, to ``log_softmax(logits[:, P-1:-1].float() / temperature)`` gathered at
    the response tokens, without those logits ever existing for more than `chunk_tokens` positions.
    Differentiable: with gradients on, each chunk is recomputed in the backward pass.
    """
    targets = input_ids[:, prompt_width:]
    head = ResponseScoringHead(model.get_output_embeddings(), targets, temperature,
                               chunk_tokens or DEFAULT_CHUNK_TOKENS, with_entropy)
    with scoring_head(model, head):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False, logits_to_keep=targets.shape[1] + 1).logits
    return ResponseScores(out[..., 0], out[..., 1] if with_entropy else None)
