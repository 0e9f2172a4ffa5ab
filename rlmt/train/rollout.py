"""Sampling from the policy for on-policy RL: token ids, the mask of generated tokens, old log-probs.

A rollout turns a batch of chat prompts into the tensors PPO needs:

- ``input_ids``: ``[batch, P + R]``, the prompt left-padded to width ``P`` followed by the response
  padded on the right to width ``R``;
- ``response_mask``: ``[batch, R]``, 1 on the tokens the policy generated up to and including the
  token that ended the response (EOS, or the token completing a stop string such as
  ``</response>`` for zero models), 0 on padding after it;
- ``old_logprobs``: ``[batch, R]``, log pi_old(token) at sampling temperature, from a forward pass
  of the policy that sampled (the same computation the update repeats, so the first PPO ratio is 1),
  ``logprob_batch_size`` rows at a time and, within those, ``logprob_chunk_tokens`` positions per
  LM-head piece (:mod:`rlmt.train.token_logprobs`): a batch's full-vocabulary logits never exist.

Sampling draws from exactly the distribution the log-probs score: the tempered softmax, cut to the
top-p nucleus. Nothing else may reshape it: transformers' ``generate`` fills every sampling field the
call leaves unset from the model's own ``generation_config`` (Qwen2.5-Instruct: top_k 20,
repetition_penalty 1.05) and from its global defaults (top_k 50), so the HF path generates with a
fresh :func:`generation_config` that sets each one (:class:`SamplingSpec` is the single source;
:mod:`rlmt.train.vllm_rollout` maps the same spec to vLLM). The tokens come from HF ``generate``
(CPU, tests, no vLLM) or from a rollout engine (a colocated vLLM on GPUs); the log-probs always come
from the policy itself.

Prompts are rendered with the *policy's* chat template (the zero template for zero models).
Response-aligned tensors use one convention everywhere: position ``t`` of a ``[batch, R]`` tensor
belongs to response token ``t``, scored from the logits (or critic output) at the position before it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import torch

from rlmt.train.token_logprobs import DEFAULT_CHUNK_TOKENS, position_ids, response_scores


@dataclass
class Rollout:
    """One batch of sampled responses (see the module docstring for the tensor layout)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor  # [B, P+R]: prompt padding 0, everything after the prompt 1
    response_mask: torch.Tensor   # [B, R]
    old_logprobs: torch.Tensor    # [B, R]
    texts: list[str]              # decoded responses, cut after a stop string
    prompt_width: int
    finished: list[bool] = field(default_factory=list)  # ended by EOS or a stop string (not the length cap)
    n_prompt_truncated: int = 0

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def render_prompts(tokenizer, prompts: Sequence[list[dict]], max_prompt_length: int) -> tuple[list[list[int]], int]:
    """Prompt token ids from the policy's chat template (with the generation prompt).

    An over-long prompt keeps its *last* ``max_prompt_length`` tokens, so the generation prompt
    the model continues from is never cut; the number of cut prompts is returned for logging.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the policy tokenizer has no chat template; prepare the policy (warm-start SFT or "
                         "the zero template) before RL")
    rows, n_truncated = [], 0
    for i, messages in enumerate(prompts):
        if not messages or messages[-1].get("role") != "user":
            raise ValueError(f"prompt {i} must end with a user turn, got roles {[m.get('role') for m in messages]}")
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        bos = tokenizer.bos_token
        ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
        ids, cut = left_truncate(ids, max_prompt_length)
        rows.append(ids)
        n_truncated += cut
    return rows, n_truncated


def left_truncate(ids: list[int], max_prompt_length: int) -> tuple[list[int], bool]:
    """The prompt rule of every RL trainer (GRPO and PPO): keep the last `max_prompt_length` tokens.

    The end of a prompt is its generation prompt (``<|start_header_id|>assistant...``), which the
    model must continue from, so the cut falls on the oldest context (verl's ``truncation: left``).
    Returns the kept ids and whether anything was cut.
    """
    if max_prompt_length < 1:
        raise ValueError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
    if len(ids) > max_prompt_length:
        return list(ids[-max_prompt_length:]), True
    return list(ids), False


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def eos_ids(model, tokenizer) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def response_end(tokens: list[int], tokenizer, eos: set[int], stop_strings: Sequence[str]) -> tuple[int, bool]:
    """Number of tokens that belong to the response, and whether it ended (EOS or stop string).

    Ends at the first EOS (kept: the policy is trained to emit it) or at the token that completes
    the first stop string; otherwise the response ran into the length cap.
    """
    text = ""
    for i, tok in enumerate(tokens):
        if tok in eos:
            return i + 1, True
        if stop_strings:
            text += tokenizer.decode([tok], skip_special_tokens=False)
            if any(s in text for s in stop_strings):
                return i + 1, True
    return len(tokens), False


@dataclass(frozen=True)
class SamplingSpec:
    """Everything that shapes the distribution a rollout samples from; the log-probs score the same one.

    The tempered softmax cut to the top-p nucleus; no top-k, min-p, typical-p, repetition or n-gram
    penalties (verl's rollouts, and GRPO's ``top_k=0, min_p=None, repetition_penalty=1.0``). A response
    ends at an EOS id or at the token completing a stop string, or after ``max_new_tokens``.
    """

    temperature: float
    top_p: float
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...] = ()


def generation_config(spec: SamplingSpec, pad_token_id: int):
    """A fresh transformers ``GenerationConfig`` from `spec` alone, every sampling field set.

    Used with :func:`own_generation_config`: ``generate`` fills a field left ``None`` from the model's
    ``generation_config`` and then from transformers' defaults (top_k 50), so the neutral value of each
    is written out here.
    """
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True, num_beams=1, num_return_sequences=1, temperature=spec.temperature, top_p=spec.top_p,
        top_k=0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0,
        encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0, min_length=0,
        min_new_tokens=0, guidance_scale=1.0, renormalize_logits=False, remove_invalid_values=False,
        max_new_tokens=spec.max_new_tokens, eos_token_id=list(spec.eos_token_ids), pad_token_id=pad_token_id,
        stop_strings=list(spec.stop_strings) or None, use_cache=True)


@contextmanager
def own_generation_config(model, config) -> Iterator[None]:
    """Make `config` the model's ``generation_config`` inside the block, so that the fields ``generate``
    takes from the model (those our config cannot switch off by a value, e.g. ``suppress_tokens``,
    ``sequence_bias``, ``forced_eos_token_id``) come from our settings, not from the checkpoint's file."""
    original = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = original


class RolloutEngine(Protocol):
    """Samples response tokens from the policy's current weights (e.g. a colocated vLLM engine).

    ``generate`` returns, per prompt, the generated token ids (EOS or stop-string token included);
    it loads the policy's weights first, and every rank calls it (the weight gather is a collective).
    """

    def generate(self, policy, prompt_rows: list[list[int]], spec: SamplingSpec) -> list[list[int]]: ...


def hf_generate(policy, tokenizer, prompt_rows: list[list[int]], spec: SamplingSpec, *, batch_size: int,
                synced: bool) -> list[list[int]]:
    """Response token ids per prompt from transformers' ``generate``, `batch_size` prompts per call.

    `synced`: the policy's parameters are sharded over the processes (FSDP2), so every forward is
    a collective; each rank then keeps stepping ``generate`` until every rank's batch is done
    (``synced_gpus``), and every rank must call this with the same number of prompts.
    """
    from tqdm.auto import tqdm

    device = next(policy.parameters()).device
    pad_id = pad_token_id(tokenizer)
    config = generation_config(spec, pad_id)
    rows: list[list[int]] = []
    for start in tqdm(range(0, len(prompt_rows), batch_size), desc="rollout", unit="batch", leave=False,
                      disable=len(prompt_rows) <= batch_size):
        ids, mask = left_pad(prompt_rows[start:start + batch_size], pad_id)
        with own_generation_config(policy, config):
            out = policy.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                  tokenizer=tokenizer if spec.stop_strings else None, synced_gpus=synced)
        rows += out[:, ids.shape[1]:].tolist()
    return rows


def pad_token_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def sample(policy, tokenizer, prompts: Sequence[list[dict]], *, max_prompt_length: int, max_new_tokens: int,
           temperature: float, top_p: float = 1.0, stop_strings: Sequence[str] = (), batch_size: int = 64,
           synced: bool = False, logprob_batch_size: int | None = None,
           logprob_chunk_tokens: int = DEFAULT_CHUNK_TOKENS, engine: RolloutEngine | None = None) -> Rollout:
    """Sample one response per prompt and compute the old log-probs (see the module docstring).

    `engine`: where the tokens come from (a colocated vLLM engine); None: the policy's own
    ``generate``, `batch_size` prompts per call (`synced`: see :func:`hf_generate`). The old log-probs
    are computed by the policy, `logprob_batch_size` rows per forward (default `batch_size`; PPO passes
    its micro-batch) and `logprob_chunk_tokens` positions per LM-head piece.
    """
    device = next(policy.parameters()).device
    pad_id = pad_token_id(tokenizer)
    prompt_rows, n_truncated = render_prompts(tokenizer, prompts, max_prompt_length)
    spec = SamplingSpec(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                        eos_token_ids=tuple(sorted(eos_ids(policy, tokenizer))), stop_strings=tuple(stop_strings))
    was_training = policy.training
    policy.eval()

    if engine is None:
        generated = hf_generate(policy, tokenizer, prompt_rows, spec, batch_size=batch_size, synced=synced)
    else:
        generated = engine.generate(policy, prompt_rows, spec)
    response_rows: list[list[int]] = []
    finished: list[bool] = []
    for row in generated:
        n, ended = response_end(row, tokenizer, set(spec.eos_token_ids), stop_strings)
        response_rows.append(row[:max(n, 1)])
        finished.append(ended)

    prompt_ids, prompt_mask = left_pad(prompt_rows, pad_id)
    width = max(len(r) for r in response_rows)
    response_ids = torch.full((len(response_rows), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(response_rows), width), dtype=torch.float32)
    for i, r in enumerate(response_rows):
        response_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        response_mask[i, :len(r)] = 1.0
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, torch.ones_like(response_ids)], dim=1)
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in response_rows]
    texts = [cut_at_stop(t, stop_strings) for t in texts]

    rows_per_pass = logprob_batch_size or batch_size
    old_logprobs = torch.cat([
        response_logprobs(policy, input_ids[i:i + rows_per_pass].to(device),
                          attention_mask[i:i + rows_per_pass].to(device), prompt_ids.shape[1], temperature,
                          chunk_tokens=logprob_chunk_tokens).float().cpu()
        for i in range(0, len(response_rows), rows_per_pass)])
    policy.train(was_training)
    return Rollout(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                   old_logprobs=old_logprobs * response_mask, texts=texts, prompt_width=prompt_ids.shape[1],
                   finished=finished, n_prompt_truncated=n_truncated)


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    """Keep text up to and including the first stop string (a token may run past it)."""
    for s in stop_strings:
        head, found, _ = text.partition(s)
        if found:
            text = head + s
    return text


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int) -> torch.Tensor:
    """Logits that predict each response token: the positions from P-1 to the second to last.

    The whole ``[batch, R, V]`` tensor: for small models and tests; PPO scores through
    :func:`response_logprobs`, which never builds it.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   use_cache=False).logits
    return logits[:, prompt_width - 1:-1]


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_width: int,
                      temperature: float, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS) -> torch.Tensor:
    """log pi(response token) at the sampling temperature, ``[batch, R]``.

    One forward of the transformer body over the given rows; the LM head and the fp32 tempered
    log-softmax run `chunk_tokens` response positions at a time (:mod:`rlmt.train.token_logprobs`), so
    ``rows x R x V`` logits never exist. Equal to the whole-batch
    ``log_softmax(logits.float() / temperature)`` within float rounding.
    """
    return response_scores(model, input_ids, attention_mask, prompt_width, temperature,
                           chunk_tokens=chunk_tokens).logprobs
