"""One optimizer step of each training job, as phases, on the code the trainers run.

Each function takes the prepared models (:mod:`rlmt.memtrace.models`), the spec and a recorder, and
runs the step's phases inside ``recorder.phase(name, computing)``. The same functions run on fake
tensors (the trace) and on real ones (the tests that check the trace against a real step).

====================  =========================================================================
job                   phases, in order (what runs in each)
====================  =========================================================================
sft                   ``forward``: TRL's fused-head forward (``model(..., labels,
                      fused_lm_head=True)``), the NLL over the sequence; ``backward``;
                      ``optimizer_step``: gradient clipping, AdamW
grpo                  ``reward``: the reward model's no-grad forward (sequence classifier);
                      ``reference`` (beta > 0): the reference's no-grad log-probs through TRL's
                      ``GRPOTrainer._get_per_token_logps_and_entropies``; ``forward``: the same
                      method on the policy with entropies, the clipped token loss (+ beta x k3 KL,
                      - entropy_coef x entropy); ``backward``; ``optimizer_step``
dpo                   ``forward``: chosen and rejected stacked, the policy's fused-head forward, the
                      reference's no-grad forward *while the policy's activations are alive* (TRL's
                      ``_compute_loss`` order), the sigmoid loss; ``backward``; ``optimizer_step``
ppo                   ``rollout_logprobs``: ``rlmt.train.rollout.response_logprobs`` on the policy in
                      eval mode, no grad, under autocast (as ``rollout.sample`` runs it inside
                      ``make_experience``); ``reward``; ``values``: ``ActorCritic.values`` (+ the
                      reference's ``response_logprobs`` when kl_coef > 0), no grad, as
                      ``make_experience`` runs them; ``forward``: ``ActorCritic.forward`` with the
                      temperature (chunked log-probs and entropies), the ``ppo_math`` policy and
                      value losses and the entropy term (always in the graph: ``ppo_update`` subtracts
                      ``entropy_coef x entropy`` whatever the coefficient); ``backward``;
                      ``optimizer_step``: per-group clipping, AdamW
====================  =========================================================================

Each ``backward`` cuts itself into ``backward`` (the loss and the head), ``backward.layers`` and
``backward.embeddings`` (:class:`rlmt.memtrace.tracer.Phase`). Not traced: GRPO's no-grad pass for the
old log-probs, which TRL runs only when ``gradient_accumulation_steps`` is not a multiple of
``steps_per_generation x num_iterations`` or with vLLM's importance-sampling correction (the paper's
configs have neither); it would cost what ``reference`` costs.

What is mirrored rather than called: TRL's loss arithmetic after the log-probs (``[rows, tokens]``
tensors, small beside the head) and rlmt's ``ppo_update`` loop body (it reads loss values back with
``float()``, which fake tensors cannot answer). The models, TRL's log-prob paths and rlmt's rollout,
critic and loss functions are the real ones.

The trace runs on CPU fake tensors (fake CUDA tensors need a CUDA build of torch). Where a CPU and a
GPU allocate differently: TRL's log-prob head (:mod:`rlmt.memtrace.gpu_kernels` gives its GPU kernels'
memory), autocast (torch's CPU rules; the ops CUDA's autocast runs in fp32, softmax and log-softmax
among them, get fp32 inputs in these models and heads anyway), attention (CPU flash attention, which
like the GPU's flash and memory-efficient kernels keeps no S x S scores) and AdamW (the spec names the
implementation the GPU runs).

Inputs: every row is full length. Rows of an RL or DPO batch carry a padding mask (one left-padded
token), as padded batches do, so the attention runs the masked path a padded batch runs; SFT's single
unpadded rows run the causal path without a mask (transformers drops an all-ones mask).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Protocol

import torch
import torch.nn.functional as F

from rlmt.memtrace.models import JobModels, dtype_of
from rlmt.memtrace.spec import JobSpec

MAX_GRAD_NORM = 1.0
CLIP_RATIO = 0.2
CLIPRANGE_VALUE = 0.5


class Recorder(Protocol):
    """:class:`rlmt.memtrace.tracer.PhaseRecorder`: ``phase()`` yields a phase whose ``then(name)`` starts the next."""

    def phase(self, name: str, computing: tuple[str, ...]) -> contextlib.AbstractContextManager: ...


def run_step(spec: JobSpec, models: JobModels, recorder: Recorder) -> None:
    """One optimizer step of the job `spec` describes (module docstring)."""
    {"sft": sft_step, "grpo": grpo_step, "dpo": dpo_step, "ppo": ppo_step}[spec.kind](spec, models, recorder)


# ----------------------------------------------------------------------------- shared pieces


def autocast(spec: JobSpec):
    """The trainer's autocast (CPU rules: see the module docstring), or nothing when the spec has none."""
    if spec.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype_of(spec.autocast_dtype))


def vocab_size(model) -> int:
    return model.get_input_embeddings().num_embeddings


def token_batch(rows: int, length: int, vocab: int, *, padded: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids ``[rows, length]`` and their attention mask (one left-padded token when `padded`, else None)."""
    ids = torch.randint(0, vocab, (rows, length))
    if not padded:
        return ids, None
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[:, 0] = 0
    return ids, mask


def accumulated_gradients(spec: JobSpec, models: JobModels) -> None:
    """Gradients of an earlier micro-batch of the same update, when the job accumulates (spec.accumulating)."""
    if spec.accumulating:
        for p in models.trained.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)


def optimizer_phase(models: JobModels, recorder: Recorder, *, per_group: bool = False) -> None:
    """Clip the gradients (per parameter group for PPO, as ``clip_per_group``), step AdamW, drop the gradients."""
    with recorder.phase("optimizer_step", ()):
        groups = [g["params"] for g in models.optimizer.param_groups] if per_group else \
            [[p for g in models.optimizer.param_groups for p in g["params"]]]
        for params in groups:
            with_grads = [p for p in params if p.grad is not None]
            if with_grads:
                torch.nn.utils.clip_grad_norm_(with_grads, MAX_GRAD_NORM)
        models.optimizer.step()
        models.optimizer.zero_grad(set_to_none=True)


def reward_phase(spec: JobSpec, models: JobModels, recorder: Recorder) -> None:
    """The reward model scoring one batch of answers (``AnswerRewardScorer``: a no-grad forward)."""
    if models.reward is None:
        return
    ids, mask = token_batch(spec.reward_sequences, spec.reward_length, vocab_size(models.reward), padded=True)
    with recorder.phase("reward", ("reward",)), torch.no_grad():
        models.reward(input_ids=ids, attention_mask=mask).logits


class _TrainerShim:
    """What ``GRPOTrainer._get_per_token_logps_and_entropies`` reads of its trainer: the accelerator's autocast."""

    def __init__(self, spec: JobSpec):
        self.accelerator = _AcceleratorShim(spec)


class _AcceleratorShim:
    is_main_process = True

    def __init__(self, spec: JobSpec):
        self._spec = spec

    def autocast(self):
        return autocast(self._spec)


def trl_per_token_logps(spec: JobSpec, model, input_ids, attention_mask, *, compute_entropy: bool):
    """TRL's own GRPO log-prob (and entropy) pass over the completion positions."""
    from trl import GRPOTrainer

    return GRPOTrainer._get_per_token_logps_and_entropies(
        _TrainerShim(spec), model, input_ids, attention_mask, spec.completion_length, batch_size=spec.sequences,
        compute_entropy=compute_entropy)


# ----------------------------------------------------------------------------- the jobs


def sft_step(spec: JobSpec, models: JobModels, recorder: Recorder) -> None:
    """TRL's SFTTrainer.compute_loss (no label smoothing, loss_type nll): fused-head NLL over the tokens."""
    ids, _ = token_batch(spec.sequences, spec.sequence_length, vocab_size(models.policy), padded=False)
    accumulated_gradients(spec, models)
    with recorder.phase("forward", ("policy",)) as phase:
        with autocast(spec):
            outputs = models.policy(input_ids=ids, labels=ids, fused_lm_head=True)
            loss = -outputs.log_probs.sum() / outputs.label_mask.sum().clamp(min=1)
        phase.then("backward")
        loss.backward()
    optimizer_phase(models, recorder)


def grpo_step(spec: JobSpec, models: JobModels, recorder: Recorder) -> None:
    """TRL's GRPOTrainer: reward, reference log-probs, then ``_compute_loss`` (token-level clip, dapo mean)."""
    ids, mask = token_batch(spec.sequences, spec.sequence_length, vocab_size(models.policy), padded=True)
    reward_phase(spec, models, recorder)
    ref_logps = None
    if models.reference is not None:
        with recorder.phase("reference", ("reference",)), torch.no_grad():
            ref_logps, _, _ = trl_per_token_logps(spec, models.reference, ids, mask, compute_entropy=False)
    accumulated_gradients(spec, models)
    with recorder.phase("forward", ("policy",)) as phase:
        with autocast(spec):
            logps, entropies, _ = trl_per_token_logps(spec, models.policy, ids, mask, compute_entropy=True)
            completion_mask = mask[:, spec.prompt_length:].float()
            advantages = torch.ones(spec.sequences, 1)
            coef_1 = torch.exp(logps - logps.detach())  # old log-probs = this pass's (num_iterations 1)
            coef_2 = torch.clamp(coef_1, 1 - CLIP_RATIO, 1 + CLIP_RATIO)
            per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
            if ref_logps is not None:
                per_token_loss = per_token_loss + spec.beta * (
                    torch.exp(ref_logps - logps) - (ref_logps - logps) - 1)
            loss = (per_token_loss * completion_mask).sum() / completion_mask.sum().clamp(min=1.0)
            if spec.entropy_coef:
                loss = loss - spec.entropy_coef * (entropies * completion_mask).sum() / completion_mask.sum().clamp(
                    min=1.0)
        phase.then("backward")
        loss.backward()
    optimizer_phase(models, recorder)


def dpo_step(spec: JobSpec, models: JobModels, recorder: Recorder, beta: float = 0.1) -> None:
    """TRL's DPOTrainer._compute_loss (sigmoid loss): policy forward, reference forward, loss, backward."""
    rows = 2 * spec.sequences  # chosen rows, then rejected rows
    ids, mask = token_batch(rows, spec.sequence_length, vocab_size(models.policy), padded=True)
    completion_mask = torch.zeros_like(mask)
    completion_mask[:, spec.prompt_length:] = 1
    accumulated_gradients(spec, models)
    with recorder.phase("forward", ("policy", "reference")) as phase:
        with autocast(spec):
            labels = ids.masked_fill(completion_mask == 0, -100)
            seq_len = spec.sequence_length - 1
            outputs = models.policy(input_ids=ids, attention_mask=mask, use_cache=False, labels=labels,
                                    fused_lm_head=True)
            logps = outputs.log_probs[:, -seq_len:].sum(dim=1)
            with torch.no_grad():
                ref_outputs = models.reference(input_ids=ids, attention_mask=mask, use_cache=False, labels=labels,
                                               fused_lm_head=True)
            ref_logps = ref_outputs.log_probs[:, -seq_len:].sum(dim=1)
            chosen, rejected = logps.chunk(2)
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            loss = -F.logsigmoid(beta * ((chosen - rejected) - (ref_chosen - ref_rejected))).mean()
        phase.then("backward", ("policy",))
        loss.backward()
    optimizer_phase(models, recorder)


def ppo_step(spec: JobSpec, models: JobModels, recorder: Recorder) -> None:
    """rlmt's PPO (``rlmt.train.ppo``): rollout log-probs, reward, values, then one micro-batch of ``ppo_update``."""
    from rlmt.train import ppo_math as pm
    from rlmt.train.rollout import response_logprobs

    p, r = spec.prompt_length, spec.completion_length
    vocab = vocab_size(models.policy)
    ro_ids, ro_mask = token_batch(spec.rollout_sequences, spec.sequence_length, vocab, padded=True)
    was_training = models.policy.training
    models.policy.eval()
    with recorder.phase("rollout_logprobs", ("policy",)), torch.no_grad(), autocast(spec):
        response_logprobs(models.policy, ro_ids, ro_mask, p, spec.temperature, **chunking(spec, response_logprobs))
    models.policy.train(was_training)
    del ro_ids, ro_mask

    reward_phase(spec, models, recorder)

    ids, mask = token_batch(spec.sequences, spec.sequence_length, vocab, padded=True)
    computing = ("critic",) + (("reference",) if models.reference is not None else ())
    with recorder.phase("values", computing), torch.no_grad(), autocast(spec):
        old_values = models.trained.values(ids, mask, p).float()
        if models.reference is not None:
            response_logprobs(models.reference, ids, mask, p, spec.temperature, **chunking(spec, response_logprobs))

    accumulated_gradients(spec, models)
    with recorder.phase("forward", ("policy", "critic")) as phase:
        response_mask = torch.ones(spec.sequences, r)
        old_logprobs = torch.zeros(spec.sequences, r)
        advantages, returns = torch.ones(spec.sequences, r), torch.ones(spec.sequences, r)
        with autocast(spec):
            scores, values = models.trained(ids, mask, p, temperature=spec.temperature,
                                            **chunking(spec, type(models.trained).forward))
        logprobs = scores.logprobs.float()
        p_loss, _ = pm.policy_loss(logprobs, old_logprobs, advantages, response_mask, CLIP_RATIO)
        v_loss, _ = pm.value_loss(values.float(), old_values, returns, response_mask, CLIPRANGE_VALUE)
        entropy = pm.masked_mean(scores.entropy.float(), response_mask)
        loss = p_loss - spec.entropy_coef * entropy + v_loss
        phase.then("backward")
        (loss * response_mask.sum() / response_mask.sum().clamp(min=1)).backward()
    optimizer_phase(models, recorder, per_group=True)


def chunking(spec: JobSpec, function) -> dict[str, int]:
    """The chunk keyword for rlmt's log-prob functions when the spec sets one (the function names the parameter)."""
    if spec.logprob_chunk_tokens is None:
        return {}
    names = [n for n in inspect.signature(function).parameters if "chunk" in n]
    if len(names) != 1:
        raise ValueError(f"logprob_chunk_tokens={spec.logprob_chunk_tokens}, but {function.__qualname__} takes no "
                         f"(or no single) chunk parameter: {list(inspect.signature(function).parameters)}")
    return {names[0]: spec.logprob_chunk_tokens}
