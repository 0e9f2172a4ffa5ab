"""Actor-critic PPO with the answer-only reward (PAPER.md §4.3), readable in one sitting.

TRL 1.x ships no PPO trainer, so this is ours. One training step:

1. **rollout**   sample one response per prompt from the current policy (``rollout.sample``: a colocated vLLM
                 engine on GPU nodes, :mod:`rlmt.train.vllm_rollout`; transformers' ``generate`` on CPU);
2. **reward**    the cell's reward scores only the extracted answer (an ``rlmt.rewards.AnswerReward``);
3. **values**    the critic's value of every response token; the old log-probs come with the rollout;
4. **rewards**   token-level: the score on the last generated token, ``- kl_coef * KL`` per token;
5. **GAE**       advantages and returns (gamma = lam = 1 by default), advantages whitened;
6. **update**    ``ppo_epochs`` passes over shuffled mini-batches: clipped policy loss, clipped
                 value loss, optional entropy bonus; one optimizer step per mini-batch;
7. **log/save**  metrics to the job's MLflow run; ``OUT/step-<N>/`` checkpoints; ``OUT/final/``.

Distributed runs (``accelerate launch``, DDP) split each step's prompts over the processes; the
advantage whitening and the logged metrics are computed over all of them. The math lives in
:mod:`rlmt.train.ppo_math`, the sampling in :mod:`rlmt.train.rollout`, the critic in
:mod:`rlmt.train.actor_critic`, the checkpoint layout in :mod:`rlmt.train.checkpoints`.

A checkpoint ``OUT/step-<N>/`` is the policy's model dir (in its compute dtype: bf16 on GPUs) plus
``trainer_state.json``, ``critic/`` (its kind and head) and ``training_state/``: the fp32 policy,
critic and AdamW state, each rank's shard in its own file (:mod:`rlmt.train.ppo_checkpoint`).
Under FSDP2 the models are built empty on every rank and only the main process reads the initial
weights (:mod:`rlmt.train.ppo_models`). After a crash (even ``kill -9``)
the run resumes from the newest complete checkpoint and continues the global step; each step's
sampling is seeded from ``(seed, step, rank)``, so the resumed run draws what the uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlmt.algorithms.ppo import ALGORITHM as ppo_algorithm
from rlmt.config import PPOConfig
from rlmt.diagnostics import RolloutLog, StepRollouts, conclude_run
from rlmt.rewards import AnswerReward
from rlmt.thinking import ThinkingFormat, extract
from rlmt.train import checkpoints as ckpt
from rlmt.train import ppo_math as pm
from rlmt.train.actor_critic import CRITIC_DIR, ActorCritic, critic_head, is_sharded, save_critic
from rlmt.train.job import cell_reward, finish, note_reward_loaded, rank_device, report_rank, reward_device
from rlmt.train.ppo_checkpoint import (
    TRAINING_STATE_DIR,
    export_dtype,
    gathered_state,
    load_training_state,
    save_training_state,
    write_policy,
)
from rlmt.train.ppo_models import full_actor_critic, sharded_actor_critic
from rlmt.train.rollout import Rollout, RolloutEngine, response_logprobs, sample
from rlmt.train.vllm_rollout import rollout_engine
from rlmt.train.runtime import TrainingSetupError

TRAINER_STATE = "trainer_state.json"


@dataclass
class PPOBatch:
    """One step's experience, response-aligned ``[B, R]`` tensors (see :mod:`rlmt.train.rollout`)."""

    rollout: Rollout
    scores: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    # per response, from the reward's extraction: policy tokens of the answer it scored and of the thought,
    # format broken, no answer found (what rlmt.diagnostics reads)
    answer_tokens: list[int] = field(default_factory=list)
    thought_tokens: list[int] = field(default_factory=list)
    malformed: list[bool] = field(default_factory=list)
    answer_missing: list[bool] = field(default_factory=list)
    reward_counts: dict[str, int] = field(default_factory=dict)  # the reward's events (judge_failed, ...)


# ----------------------------------------------------------------------------- the training function


def train_ppo(policy_dir: str | Path, reward: Any, train_path: str | Path,
              val_path: str | Path | None, out: str | Path, settings: PPOConfig) -> Path:
    """Train the policy in `policy_dir` with PPO; returns ``OUT/final/``.

    `reward`: the cell's :class:`rlmt.rewards.NamedReward` (built here, on this rank's device), a
    classifier reward-model dir, or an :class:`rlmt.rewards.AnswerReward` built already with the
    policy's format (tests use a :class:`rlmt.rewards.RuleReward`); see
    :func:`rlmt.train.job.cell_reward`. Each prompt row's other columns (``id``) reach it as extras.

    Launchers: DDP (``config/accelerate/ddp.yaml``) or FSDP2 (``config/accelerate/fsdp2.yaml``,
    actor and critic parameters, gradients and optimizer state sharded over the processes).
    """
    from rlmt.models.loading import load_causal_lm, load_tokenizer
    from rlmt.train.runtime import read_prompt_table, use_bf16

    out = Path(out)
    policy_dir = Path(policy_dir)
    accelerator = make_accelerator(settings)
    sharded = check_launcher(accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    _check_geometry(settings, world)
    fmt = ThinkingFormat.load(policy_dir)
    train_rows = read_prompt_table(train_path)
    val_rows = read_prompt_table(val_path)[: settings.val_prompts] if val_path else []
    total_steps = _total_steps(settings, len(train_rows))
    accelerator.print(f"ppo: {world} processes ({accelerator.distributed_type.value}"
                      f"{', actor and critic sharded by FSDP2' if sharded else ''}), {total_steps} steps of "
                      f"{settings.prompts_per_step} prompts")
    if (timeout_min := process_group_timeout_min()) is not None:
        accelerator.print(f"ppo: collectives time out after {timeout_min:g} min")

    # -- resume: the newest complete checkpoint, else the initial policy with a fresh critic head
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.discard_incomplete(out)
    accelerator.wait_for_everyone()
    resume = ckpt.latest_checkpoint(out)
    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    if sharded:  # built empty on every rank; the main process alone reads the initial weights (rlmt.train.ppo_models)
        model = sharded_actor_critic(policy_dir, settings.critic, device=accelerator.device, world=world,
                                     bf16=use_bf16(settings.bf16), initial_weights=resume is None,
                                     is_main=accelerator.is_main_process)
    else:
        model = full_actor_critic(policy_dir, settings.critic)
    optimizer = torch.optim.AdamW(model.param_groups(settings.learning_rate, settings.critic_lr, settings.weight_decay))
    state = {"global_step": 0, "log_history": []}
    if resume:  # weights and optimizer state from the checkpoint, each rank its own shard
        load_training_state(resume / TRAINING_STATE_DIR, model, optimizer)
        state = json.loads((resume / TRAINER_STATE).read_text())
        accelerator.print(f"resuming from {resume} at step {state['global_step']}")
    reference = None
    if settings.kl_coef:
        # The KL penalty compares with the *initial* policy, also after a resume.
        reference = load_causal_lm(policy_dir, device=rank_device(accelerator), dtype="float32").eval().requires_grad_(False)
    if not sharded:  # DDP: each rank's full copy moves to its device (FSDP2: each shard is on its device already)
        model, optimizer = accelerator.prepare(model, optimizer)
    scorer = cell_reward(reward, fmt, strict=settings.strict, device=rank_device(accelerator))
    note_reward_loaded(scorer)
    core: ActorCritic = accelerator.unwrap_model(model)
    devices = {"policy": _device_name(next(core.policy.parameters()).device),
               "critic": _device_name(next(core.critic.parameters()).device),
               "reward": reward_device(scorer)}
    # rollouts through a colocated vLLM engine per rank where vLLM is wanted, else the policy's generate
    engine = rollout_engine(settings, policy_dir, accelerator)

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=state["global_step"], desc="ppo", unit="step",
               disable=not accelerator.is_main_process)
    diag_log = RolloutLog(out)  # every step's rollouts (rlmt.diagnostics); a run that resumes nothing starts afresh
    if accelerator.is_main_process and resume is None:
        diag_log.reset()
    for step in range(state["global_step"] + 1, total_steps + 1):
        rows = _rows_for_step(train_rows, step, settings, world, rank)
        prompts = [r["messages"] for r in rows]
        _seed_step(settings.seed, step, rank)
        batch = make_experience(accelerator, model, reference, tokenizer, scorer, prompts, fmt, settings, engine,
                                extras=[_extras(r) for r in rows])
        metrics = ppo_update(accelerator, model, optimizer, batch, settings)
        rollouts = _step_rollouts(accelerator, batch, step)
        metrics.update(_rollout_metrics(accelerator, batch, rollouts, with_kl=reference is not None))
        metrics.update(_reward_event_shares(accelerator, batch.reward_counts, len(batch.rollout)))
        state["global_step"] = step
        state["log_history"].append({"step": step, **metrics})
        _log(accelerator, metrics, step)
        if accelerator.is_main_process:
            diag_log.append(rollouts)
        if settings.log_samples_every and step % settings.log_samples_every == 0:
            _log_samples(accelerator, prompts, batch, fmt, settings.strict, step)
        if step % settings.checkpoints.save_steps == 0 or step == total_steps:
            val_reward = (validate(accelerator, model, tokenizer, scorer, val_rows, fmt, settings, engine)
                          if val_rows else None)
            save_checkpoint(accelerator, model, optimizer, tokenizer, state, out, fmt, settings, val_reward)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['diag/reward_mean']:.3f}")
    bar.close()
    if accelerator.is_main_process:
        conclude_run(out)  # the length verdict over every step's rollouts: diagnostics/verdict.json + MLflow tag

    report_rank("ppo", accelerator, core, devices=devices)
    accelerator.wait_for_everyone()
    # the same end as GRPO and DPO: select, write final/ (main process), record step and model in MLflow
    return finish(out, fmt, settings.checkpoints.select_step, accelerator)


# ----------------------------------------------------------------------------- one step, in named parts


@torch.no_grad()
def make_experience(accelerator, model, reference, tokenizer, scorer: AnswerReward, prompts: list[list[dict]],
                    fmt: ThinkingFormat, settings: PPOConfig, engine: RolloutEngine | None = None, *,
                    extras: list[dict] | None = None) -> PPOBatch:
    """Steps 1-5: rollout, answer-only reward, values, token-level rewards, GAE and whitening.

    `engine`: where the rollout's tokens come from (the colocated vLLM engine); None: the policy's
    ``generate``. `extras`: each prompt row's other columns, given to the reward. Old and reference log-probs are computed ``micro_batch_size`` rows per forward and
    ``logprob_chunk_tokens`` positions per LM-head piece; the values come from the critic alone.
    Everything runs under the update's autocast, so the old log-probs are computed as the update's are.
    """
    core: ActorCritic = accelerator.unwrap_model(model)
    ro = settings.rollout
    with accelerator.autocast():
        rollout = sample(core.policy, tokenizer, prompts, max_prompt_length=ro.max_prompt_length,
                         max_new_tokens=ro.max_completion_length, temperature=ro.temperature, top_p=ro.top_p,
                         stop_strings=fmt.stop_strings, batch_size=settings.generation_batch_size,
                         synced=is_sharded(core), logprob_batch_size=settings.micro_batch_size,
                         logprob_chunk_tokens=settings.logprob_chunk_tokens, engine=engine)
    rewarded = scorer.score(prompts, rollout.texts, extras)
    scores = torch.tensor(rewarded.scores, dtype=torch.float32)
    found = rewarded.extractions

    mask = rollout.response_mask
    values, ref_logprobs = [], []
    device = accelerator.device
    for i in range(0, len(rollout), settings.micro_batch_size):
        ids = rollout.input_ids[i:i + settings.micro_batch_size].to(device)
        att = rollout.attention_mask[i:i + settings.micro_batch_size].to(device)
        with accelerator.autocast():
            values.append(core.values(ids, att, rollout.prompt_width).float().cpu())
            if reference is not None:
                ref_logprobs.append(response_logprobs(reference, ids, att, rollout.prompt_width, ro.temperature,
                                                      chunk_tokens=settings.logprob_chunk_tokens).float().cpu())
    values = torch.cat(values) * mask
    # log pi_old - log pi_ref per token: the sampled estimate of KL(pi_old || pi_ref)
    kl = (rollout.old_logprobs - torch.cat(ref_logprobs)) * mask if reference is not None else torch.zeros_like(mask)

    rewards = pm.token_level_rewards(scores, mask, kl, settings.kl_coef)
    advantages, returns = pm.gae(rewards, values, mask, settings.gamma, settings.lam)
    if settings.whiten_advantages:
        advantages = whiten_across_processes(accelerator, advantages, mask)
    return PPOBatch(rollout=rollout, scores=scores, values=values, advantages=advantages, returns=returns, kl=kl,
                    answer_tokens=_token_counts(tokenizer, [e.answer for e in found]),
                    thought_tokens=_token_counts(tokenizer, [e.thought for e in found]),
                    malformed=[not e.well_formed for e in found], answer_missing=[not e.answer_found for e in found],
                    reward_counts=dict(rewarded.counts))


def ppo_update(accelerator, model, optimizer, batch: PPOBatch, settings: PPOConfig) -> dict[str, float]:
    """Step 6: ``ppo_epochs`` passes of clipped policy + value updates over shuffled mini-batches.

    Memory: the policy's log-probs and entropies come ``logprob_chunk_tokens`` positions at a time, each
    chunk's full-vocabulary logits recomputed in the backward pass rather than kept; with
    ``gradient_checkpointing`` actor and critic keep only each layer's input for the backward.
    """
    rollout = batch.rollout
    n = len(rollout)
    mini = settings.mini_batch_size // accelerator.num_processes
    micro = min(settings.micro_batch_size, mini)
    temperature = settings.rollout.temperature
    stats: dict[str, list[float]] = {}
    accelerator.unwrap_model(model).set_gradient_checkpointing(settings.gradient_checkpointing)
    model.train()
    for _ in range(settings.ppo_epochs):
        order = torch.randperm(n).tolist()
        for start in range(0, n, mini):
            idx = order[start:start + mini]
            tokens_in_minibatch = rollout.response_mask[idx].sum().clamp(min=1)
            for m0 in range(0, len(idx), micro):
                rows = idx[m0:m0 + micro]
                mask = rollout.response_mask[rows].to(accelerator.device)
                with accelerator.autocast():
                    scores, values = model(rollout.input_ids[rows].to(accelerator.device),
                                           rollout.attention_mask[rows].to(accelerator.device), rollout.prompt_width,
                                           temperature=temperature, chunk_tokens=settings.logprob_chunk_tokens)
                logprobs = scores.logprobs.float()
                p_loss, p_stats = pm.policy_loss(logprobs, rollout.old_logprobs[rows].to(accelerator.device),
                                                 batch.advantages[rows].to(accelerator.device), mask,
                                                 settings.clip_ratio)
                v_loss, v_stats = pm.value_loss(values.float(), batch.values[rows].to(accelerator.device),
                                                batch.returns[rows].to(accelerator.device), mask,
                                                settings.cliprange_value)
                entropy = pm.masked_mean(scores.entropy.float(), mask)
                loss = p_loss - settings.entropy_coef * entropy + v_loss
                # token-mean over the whole mini-batch: weigh each micro-batch by its share of tokens
                accelerator.backward(loss * mask.sum() / tokens_in_minibatch)
                for key, value in {"policy/loss": p_loss, "critic/loss": v_loss, "policy/entropy": entropy,
                                   **p_stats, **v_stats}.items():
                    stats.setdefault(key, []).append(float(value.detach()))
            grad_norms = clip_per_group(accelerator, optimizer, settings.max_grad_norm)
            for key, value in grad_norms.items():
                stats.setdefault(key, []).append(value)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {k: _mean_across_processes(accelerator, sum(v) / len(v)) for k, v in stats.items()}


def clip_per_group(accelerator, optimizer, max_norm: float) -> dict[str, float]:
    """Clip the policy's and the critic's gradients separately (their scales differ: verl clips each model).

    Under FSDP2 the gradients are shards (DTensors): torch's clipping computes the norm over all
    ranks' shards, and the norm is read back as one full value.
    """
    norms = {}
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            continue
        if hasattr(params[0], "full_tensor"):  # FSDP2 shards
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        else:
            norm = accelerator.clip_grad_norm_(params, max_norm)
        norms[f"{group.get('name', 'group')}/grad_norm"] = float(norm)
    return norms


def make_accelerator(settings: PPOConfig):
    """The job's Accelerator, its process group's collectives timing out after ``process_group_timeout_min``.

    NCCL's watchdog aborts a collective after 10 minutes by default; a checkpoint or a validation
    that keeps one rank busy longer while the others wait in a barrier would kill the job. The
    timeout reaches the group when this Accelerator creates it (``InitProcessGroupKwargs``); a group
    some earlier code created gets it set afterwards.
    """
    from datetime import timedelta

    import torch.distributed as dist
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    from rlmt.train.runtime import use_bf16

    timeout = timedelta(minutes=settings.process_group_timeout_min)
    accelerator = Accelerator(mixed_precision="bf16" if use_bf16(settings.bf16) else "no",
                              kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
    if dist.is_available() and dist.is_initialized() and process_group_timeout_min() != timeout / timedelta(minutes=1):
        dist.distributed_c10d._set_pg_timeout(timeout)
    return accelerator


def process_group_timeout_min() -> float | None:
    """The default process group's collective timeout in minutes, as its backend holds it (None: no group)."""
    from datetime import timedelta

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = dist.distributed_c10d._get_default_group()
    backend = group._get_backend(torch.device("cuda" if torch.device("cuda") in group._device_types else "cpu"))
    return backend.options._timeout / timedelta(minutes=1)


def check_launcher(accelerator) -> bool:
    """PPO runs plain, under DDP, or sharded with FSDP2 (``config/accelerate/fsdp2.yaml``); True: sharded.

    The launcher's config says which (``accelerate launch`` exports ``ACCELERATE_USE_FSDP`` and
    ``FSDP_VERSION``). PPO applies FSDP2 itself (:func:`rlmt.train.actor_critic.shard`) rather than
    through ``accelerator.prepare``, so the same code shards on GPUs and on CPU processes (accelerate
    1.15 grants its FSDP mode to GPU-type devices only).

    DeepSpeed is refused: one engine would own actor and critic, clip their gradients as one
    vector (verl clips each model on its own, as :func:`clip_per_group` does) and rescale the loss
    by its own accumulation count; FSDP2 keeps this loop's plain torch semantics, as the
    reference's FSDP workers did.
    """
    import os

    if accelerator.distributed_type.name == "DEEPSPEED" or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        raise TrainingSetupError("PPO's sharded path is FSDP2: launch it with config/accelerate/fsdp2.yaml "
                                 "(resources.train_ppo), not DeepSpeed")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise TrainingSetupError("PPO needs FSDP version 2 (fsdp_version: 2, as in config/accelerate/fsdp2.yaml)")
    return accelerator.num_processes > 1


@torch.no_grad()
def validate(accelerator, model, tokenizer, scorer: AnswerReward, val_rows: list[dict], fmt: ThinkingFormat,
             settings: PPOConfig, engine: RolloutEngine | None = None) -> float:
    """Mean answer-only reward of one sampled response per validation prompt (for best_val_reward).

    `engine`: as in :func:`make_experience`."""
    core: ActorCritic = accelerator.unwrap_model(model)
    my_rows = val_rows[accelerator.process_index::accelerator.num_processes]
    mine = [r["messages"] for r in my_rows]
    counted = len(mine)
    synced = is_sharded(core)
    if synced and val_rows:
        # sharded parameters: every rank must run as many forwards as the others, so a rank with
        # fewer prompts samples extra copies of a prompt, which are not counted
        per_rank = math.ceil(len(val_rows) / accelerator.num_processes)
        mine = mine + [val_rows[0]["messages"]] * (per_rank - len(mine))
    total, count = 0.0, 0
    if mine:
        ro = settings.rollout
        with accelerator.autocast():
            rollout = sample(core.policy, tokenizer, mine, max_prompt_length=ro.max_prompt_length,
                             max_new_tokens=ro.max_completion_length, temperature=ro.temperature, top_p=ro.top_p,
                             stop_strings=fmt.stop_strings, batch_size=settings.generation_batch_size,
                             synced=synced, logprob_batch_size=settings.micro_batch_size,
                             logprob_chunk_tokens=settings.logprob_chunk_tokens, engine=engine)
        scores = scorer.score(mine[:counted], rollout.texts[:counted], [_extras(r) for r in my_rows]).scores
        total, count = float(sum(scores)), len(scores)
    sums = accelerator.reduce(torch.tensor([total, count], device=accelerator.device, dtype=torch.float64), "sum")
    return float(sums[0] / sums[1].clamp(min=1))


def whiten_across_processes(accelerator, x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """:func:`ppo_math.masked_whiten` with the mean and variance of all processes' tokens."""
    if accelerator.num_processes == 1:
        return pm.masked_whiten(x, mask, eps=eps)
    sums = torch.stack([pm.masked_sum(x, mask), pm.masked_sum(x * x, mask), mask.sum()]).double()
    s, s2, n = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()
    mean = s / n
    var = (s2 / n - mean ** 2) * n / (n - 1).clamp(min=1)
    return ((x - mean) * torch.rsqrt(var + eps)).float() * mask


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(accelerator, model, optimizer, tokenizer, state: dict, out: Path, fmt: ThinkingFormat,
                    settings: PPOConfig, val_reward: float | None) -> Path | None:
    """Write ``OUT/checkpoint-<N>/`` (staging), then let :mod:`checkpoints` rename it to ``step-<N>``.

    Every rank calls it. Every rank writes its own shard of the fp32 training state (policy, critic,
    AdamW: :mod:`rlmt.train.ppo_checkpoint`); no rank gathers it. The policy export and the critic's
    head are gathered one tensor at a time, in the policy's compute dtype, and the main process writes
    them, the trainer state, and renames the staging dir once all of it is on disk.
    """
    from rlmt.train.runtime import use_bf16

    step = state["global_step"]
    staging = out / f"{ckpt.STAGING_PREFIX}{step}"
    core: ActorCritic = accelerator.unwrap_model(model)
    save_training_state(staging / TRAINING_STATE_DIR, core, getattr(optimizer, "optimizer", optimizer))
    dtype = export_dtype(use_bf16(settings.bf16))
    main = accelerator.is_main_process
    weights = gathered_state(core.policy, dtype, keep=main)
    head = gathered_state(critic_head(core.critic), torch.float32, keep=main)
    path = None
    if main:
        write_policy(core.policy, weights, staging, dtype)
        tokenizer.save_pretrained(str(staging))
        save_critic(staging / CRITIC_DIR, settings.critic, head)
        (staging / TRAINER_STATE).write_text(json.dumps({**state, "val_reward": val_reward}, indent=1) + "\n")
        path = ckpt.finalize_checkpoint(staging, out, step, fmt, val_reward)
        ckpt.prune(out, settings.checkpoints.save_total_limit,
                   ckpt.protected_steps(out, settings.checkpoints.select_step))
        _log(accelerator, {"val/reward": val_reward} if val_reward is not None else {}, step)
    accelerator.wait_for_everyone()
    return path


# ----------------------------------------------------------------------------- data, seeds, metrics


def _total_steps(settings: PPOConfig, n_prompts: int) -> int:
    """The run's steps as rlmt.algorithms.ppo counts them (the same count the preflight checks select_step with)."""
    return ppo_algorithm.total_steps(settings, n_prompts)


def _check_geometry(settings: PPOConfig, world: int) -> None:
    """The batch geometry rlmt.algorithms.ppo requires (the rule the preflight checks before any job)."""
    problem = ppo_algorithm.geometry_problem(settings, world)
    if problem:
        key, message = problem
        raise TrainingSetupError(f"{key}: {message}")


def _rows_for_step(rows: list[dict], step: int, settings: PPOConfig, world: int, rank: int) -> list[dict]:
    """This process's share of step `step`'s prompt rows: a seeded shuffle per epoch, read as one stream."""
    n, k = len(rows), settings.prompts_per_step
    picked = []
    for position in range((step - 1) * k, step * k):
        epoch, offset = divmod(position, n)
        order = list(range(n))
        random.Random(settings.seed * 100_003 + epoch).shuffle(order)
        picked.append(rows[order[offset]])
    return picked[rank::world]


def _extras(row: dict) -> dict:
    """A prompt row's columns other than its messages (``id``, ...): what the reward gets as extras."""
    return {k: v for k, v in row.items() if k != "messages"}


def _seed_step(seed: int, step: int, rank: int) -> None:
    torch.manual_seed(seed * 1_000_003 + step * 1_009 + rank)


def _device_name(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else str(device)


def _reward_event_shares(accelerator, counts: dict[str, int], n: int) -> dict[str, float]:
    """``reward/<event>_per_answer``: per answer of this step (every process's), how often the reward counted an
    event (a rubric judge's ``judge_failed``, a classifier's ``prompt_truncated``, ...); GRPO logs the same."""
    from accelerate.utils import gather_object

    gathered = gather_object([(counts, n)]) if accelerator.num_processes > 1 else [(counts, n)]
    total = sum(k for _, k in gathered)
    names = sorted({name for c, _ in gathered for name in c})
    return {f"reward/{name}_per_answer": sum(c.get(name, 0) for c, _ in gathered) / total for name in names} if total else {}


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Each text's length in policy tokens (0 for an empty text)."""
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) if t else 0 for t in texts]


def _step_rollouts(accelerator, batch: PPOBatch, step: int) -> StepRollouts:
    """The step's rollouts of every process, gathered on every process (each holds as many; a collective)."""
    r = batch.rollout

    def gathered(values, dtype=torch.long) -> list:
        return accelerator.gather(torch.as_tensor(values, dtype=dtype).to(accelerator.device)).cpu().tolist()

    return StepRollouts(step=step, reward=gathered(batch.scores, torch.float64),
                        answer_tokens=gathered(batch.answer_tokens), thought_tokens=gathered(batch.thought_tokens),
                        clipped=[bool(f) for f in gathered([not f for f in r.finished])],
                        malformed=[bool(m) for m in gathered(batch.malformed)],
                        completion_tokens=gathered(r.response_lengths),
                        answer_missing=[bool(m) for m in gathered(batch.answer_missing)])


def _rollout_metrics(accelerator, batch: PPOBatch, rollouts: StepRollouts, *, with_kl: bool) -> dict[str, float]:
    """The step's ``diag/*`` metrics (rlmt.diagnostics: reward, lengths, clipped and malformed shares, KL to the
    reference when there is one, reward-length correlations) and the critic's."""
    mask = batch.rollout.response_mask
    kl = _mean_across_processes(accelerator, float(pm.masked_mean(batch.kl, mask))) if with_kl else None
    return {
        **rollouts.diagnostics(kl),
        "prompt/truncated": _mean_across_processes(accelerator, float(batch.rollout.n_prompt_truncated)),
        "critic/values_mean": _mean_across_processes(accelerator, float(pm.masked_mean(batch.values, mask))),
        "critic/returns_mean": _mean_across_processes(accelerator, float(pm.masked_mean(batch.returns, mask))),
        "critic/explained_variance": _mean_across_processes(
            accelerator, float(pm.explained_variance(batch.values, batch.returns, mask))),
    }


def _mean_across_processes(accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor(value, device=accelerator.device, dtype=torch.float64), "mean"))


def _log(accelerator, metrics: dict[str, float], step: int) -> None:
    import mlflow

    if not accelerator.is_main_process or mlflow.active_run() is None:
        return
    from rlmt.tracking import _retry

    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if clean:
        _retry(mlflow.log_metrics, clean, step=step)


def _log_samples(accelerator, prompts: list[list[dict]], batch: PPOBatch, fmt: ThinkingFormat, strict: bool,
                 step: int, max_rows: int = 8) -> None:
    import mlflow

    if not accelerator.is_main_process or mlflow.active_run() is None:
        return
    from rlmt.tracking import _retry

    rows: dict[str, list[Any]] = {"step": [], "prompt": [], "thought": [], "answer": [], "reward": []}
    for messages, text, score in list(zip(prompts, batch.rollout.texts, batch.scores.tolist()))[:max_rows]:
        e = extract(text, fmt, strict)
        for key, value in (("step", step), ("prompt", messages[-1]["content"]), ("thought", e.thought),
                           ("answer", e.answer), ("reward", score)):
            rows[key].append(value)
    _retry(mlflow.log_table, data=rows, artifact_file=f"samples/step-{step:06d}.json")
