"""GRPO with the answer-only reward (PAPER.md §4.2) on TRL's GRPOTrainer.

Every reference setting is passed explicitly, so TRL's defaults (which differ: beta 0,
temperature 1, bf16 on, gradient checkpointing on, a KL importance weight verl does not use)
never leak in. Mapping from the reference verl config to TRL 1.16:

=============================================  ==========================================
verl                                           here (GRPOConfig field -> TRL argument)
=============================================  ==========================================
rollout.n = 8                                  num_generations
train_batch_size (64 or 128 prompts)          prompts_per_step: one rollout = TRL's generation_batch_size
                                               (prompts_per_step x num_generations completions)
ppo_mini_batch_size = 64 prompts               prompts_per_update: one optimizer update = accumulated
                                               micro-batches of prompts_per_update x num_generations
                                               completions; a rollout of 128 makes 2 updates
ppo_epochs = 1                                 num_iterations
temperature 0.7, top_p 1.0                     rollout.temperature / rollout.top_p, top_k off
kl_loss_coef 0.001, low_var_kl (k3), as loss   beta (TRL's KL term *is* k3); the importance
                                               weight on it (use_bias_correction_kl) is off
entropy_coeff 0.001                            entropy_coef (TRL offers the bonus)
clip_ratio 0.2                                 epsilon (= epsilon_high)
loss_agg_mode token-mean                       loss_type "dapo" (mean over the batch's tokens)
norm_adv_by_std_in_grpo                        scale_rewards "group"
max_prompt_length 1024, truncation left        enforced here (TRL 1.16 has no prompt limit): a longer
                                               prompt keeps its last tokens, the rule PPO uses
                                               (rollout.left_truncate); cut prompts are counted
(no importance weight vLLM -> policy)          vllm_importance_sampling_correction off (TRL: on)
vllm gpu_memory_utilization 0.4                rollout.vllm_gpu_memory_utilization
vllm max_model_len = prompt + response         vllm_max_model_length = rollout.context_length (else vLLM
                                               takes the model's own context: 131,072 for Llama-3.1,
                                               whose one sequence's KV cache does not fit beside training)
vllm free_cache_engine (cache freed between    vllm_enable_sleep_mode = rollout.vllm_enable_sleep_mode
rollouts)                                      (weights and KV cache leave the GPU during the update)
max_response_length 4096                       rollout.max_completion_length
lr 1e-6 const, wd 0.01, grad_clip 1.0          learning_rate, lr_scheduler_type, weight_decay,
                                               max_grad_norm
=============================================  ==========================================

Zero models stop at ``</response>``: with vLLM as a stop string kept in the text; with
transformers through ``stop_strings`` (see :func:`_stop_at_strings`).

Run length: with an int ``checkpoints.select_step`` and ``stop_at_select_step`` the run ends at that
step (:func:`run_max_steps`, the schedule of :func:`rlmt.config.training_schedule`). Validation runs
only where something reads it (:func:`validates`), in batches as large as a rollout's share of a
process (:func:`eval_batch_per_device`), so a validation costs a few vLLM calls, not one per group.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlmt.config import GRPOConfig
from rlmt.diagnostics import conclude_run
from rlmt.thinking import ThinkingFormat
from rlmt.train import checkpoints as ckpt
from rlmt.train.callbacks import CheckpointCallback, MLflowMetricsCallback, SampleBuffer, SamplesTableCallback
from rlmt.train.job import (cell_reward, finish, log_setup, note_loaded, note_reward_loaded, process_state, rank_device,
                            report_rank, reward_device, train_from)
from rlmt.train.rollout import left_truncate
from rlmt.train.rollout_diagnostics import DiagnosticsCallback, PendingRollouts, RolloutRow
from rlmt.train.runtime import (
    TrainingSetupError,
    accumulation_steps,
    prompt_tokens,
    precision_args,
    read_prompt_table,
    vllm_wanted,
    weights_dtype,
    world_size,
)

if TYPE_CHECKING:
    from rlmt.rewards import AnswerReward

VAL_METRIC = "eval_reward"


class AnswerRewardWithLogging:
    """The answer-only reward as TRL calls it, plus the per-step metrics RLMT needs.

    Wraps the cell's :class:`rlmt.rewards.AnswerReward` (through its TRL reward function: the
    dataset's ``id`` column reaches the reward as each item's extras). Each completion's reward, answer
    and thought lengths in policy tokens (from the reward's own extraction, one per output), whether it
    ended before the length limit and whether its format holds go to :attr:`rollouts`, which
    :class:`rlmt.train.rollout_diagnostics.DiagnosticsCallback` logs as the step's ``diag/*`` metrics
    (:mod:`rlmt.diagnostics`). It also hands the batch, with thought and answer apart, to the samples table.
    """

    __name__ = "answer_reward"  # TRL names the reward metrics after it: rewards/answer_reward/mean

    def __init__(self, reward: "AnswerReward", tokenizer, *, buffer: SampleBuffer | None = None):
        self.reward = reward
        self.reward_fn = reward.as_trl_reward_func()
        self.tokenizer = tokenizer
        self.buffer = buffer
        self.rollouts = PendingRollouts()

    def __call__(self, prompts, completions, log_metric=None, **kwargs) -> list[float]:
        scores = self.reward_fn(prompts=prompts, completions=completions, **kwargs)
        batch = self.reward_fn.last_batch
        found = batch.extractions  # the reward's one extraction of each output
        if log_metric is not None and found:  # TRL averages over processes: equal batches give the global share
            for name, count in sorted(batch.counts.items()):
                log_metric(f"reward/{name}_per_answer", count / len(found))
        texts = completions
        self.rollouts.record(self._rollout_rows(scores, found, kwargs.get("completion_ids")))
        if self.buffer is not None:
            self.buffer.record([
                {"id": str(i), "prompt": _last_user(p), "thought": e.thought, "answer": e.answer,
                 "well_formed": e.well_formed, "reward": float(s)}
                for i, p, e, s in zip(kwargs.get("id") or [None] * len(texts), prompts, found, scores)])
        return scores

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def _rollout_rows(self, scores, found, completion_ids) -> list[RolloutRow]:
        """Each completion as the diagnostics see it. `completion_ids` (TRL's, cut after EOS) give the
        output's length and whether it ended; without them (a direct call) it counts as ended."""
        ends = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id} - {None}
        rows = []
        for score, e, ids in zip(scores, found, completion_ids or [None] * len(found)):
            answer, thought = self._tokens(e.answer), self._tokens(e.thought)
            rows.append(RolloutRow(reward=float(score), answer_tokens=answer, thought_tokens=thought,
                                   completion_tokens=len(ids) if ids is not None else answer + thought,
                                   ended=ids is None or (len(ids) > 0 and int(ids[-1]) in ends),
                                   malformed=not e.well_formed, answer_missing=not e.answer_found))
        return rows


def _last_user(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _stop_at_strings(model, tokenizer, stops: list[str]) -> None:
    """Make ``model.generate`` honour `stops` (and keep them in the text) for TRL's transformers path.

    TRL passes no tokenizer to ``generate``, which ``stop_strings`` needs, and after a stop string
    transformers pads the rest of the row — TRL would then train on those pad tokens, as it only
    cuts completions at EOS. So the tokenizer is bound in, and the first pad after a stopped row's
    stop string becomes EOS: the completion ends right after the stop string, as with vLLM.
    """
    import torch

    original = model.generate
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id

    @functools.wraps(original)
    def generate(*args, **kwargs):
        kwargs.setdefault("tokenizer", tokenizer)
        config = kwargs.get("generation_config")
        if config is not None and not config.stop_strings:
            config.stop_strings = list(stops)
        out = original(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        completion = out[:, prompt_len:]
        if pad is not None and pad != eos:
            is_pad = completion == pad
            has_pad = is_pad.any(dim=1)
            first = torch.where(has_pad, is_pad.int().argmax(dim=1), torch.full_like(has_pad, -1, dtype=torch.long))
            rows = torch.nonzero(has_pad).flatten()
            completion[rows, first[rows]] = eos
        return out

    model.generate = generate


def _prompt_dataset(path: str | Path, tokenizer, max_prompt_length: int):
    """(dataset with ``prompt`` and ``id``, number of prompts longer than max_prompt_length).

    Nothing is dropped: the trainer left-truncates the long ones (:func:`rlmt.train.rollout.left_truncate`).
    """
    from datasets import Dataset

    rows = read_prompt_table(path)
    kept = [{"id": str(r["id"]), "prompt": r["messages"]} for r in rows]
    too_long = sum(prompt_tokens(tokenizer, r["messages"]) > max_prompt_length for r in rows)
    return Dataset.from_list(kept), too_long


def left_truncating_trainer(max_prompt_length: int):
    """TRL's GRPOTrainer whose prompts keep their last `max_prompt_length` tokens (as PPO's and verl's)."""
    from trl import GRPOTrainer

    class LeftTruncatingGRPOTrainer(GRPOTrainer):
        prompts_truncated = 0

        def _tokenize_prompts(self, prompts: list):
            prompt_ids, images, fields = super()._tokenize_prompts(prompts)
            cut = [left_truncate(list(ids), max_prompt_length) for ids in prompt_ids]
            self.prompts_truncated += sum(c for _, c in cut)
            return [ids for ids, _ in cut], images, fields

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, **kwargs):
            # No forward pass takes more sequences than the training micro-batch. TRL sizes its evaluation
            # forwards by per_device_eval_batch_size, which here holds a whole rollout share (so that one vLLM
            # call samples it): 64 sequences of 5,120 tokens in one forward would need their full-vocabulary
            # logits at once. Chunking changes no value (TRL concatenates the chunks' log-probs).
            cap = self.args.per_device_train_batch_size
            batch_size = min(batch_size or input_ids.size(0), cap)
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              batch_size=batch_size, **kwargs)

    return LeftTruncatingGRPOTrainer


def run_max_steps(settings: GRPOConfig) -> int:
    """TRL's ``max_steps``: where the run ends (-1: TRL's epoch arithmetic decides).

    With an int ``select_step`` and ``stop_at_select_step`` the run stops there: the later steps are never
    evaluated (the zero-Llama cells would otherwise train 468 updates to use step 135). Same rule as
    :func:`rlmt.config.training_schedule`: the configured ``max_steps`` when it is shorter. A select_step
    beyond the epochs' end is refused when the config is loaded (and by :func:`check_select_step_reached`).
    """
    import math

    from rlmt.algorithms.schedule import last_step

    steps = last_step(settings.max_steps if settings.max_steps > 0 else math.inf, settings.checkpoints)
    return -1 if steps == math.inf else int(steps)


def epoch_updates(settings: GRPOConfig, n_prompts: int) -> int:
    """Optimizer updates of the configured epochs over `n_prompts` prompts (the schedule's own arithmetic)."""
    from rlmt.algorithms.grpo import epoch_updates as updates

    return updates(settings, n_prompts)


def check_select_step_reached(settings: GRPOConfig, n_prompts: int) -> None:
    """Refuse a run that would stop at select_step only by training past its configured epochs."""
    steps = run_max_steps(settings)
    if settings.max_steps <= 0 < steps and steps > epoch_updates(settings, n_prompts):
        raise TrainingSetupError(f"checkpoints.select_step {steps} is beyond the end of {settings.num_train_epochs:g} "
                                 f"epoch(s) over {n_prompts} prompts ({epoch_updates(settings, n_prompts)} updates)")


def validates(settings: GRPOConfig) -> bool:
    """Whether GRPO validates at its checkpoints.

    Only where something reads it: ``select_step: best_val_reward``, or an explicit ``val_prompts > 0`` (the
    config asks for the curve). With an int or ``last`` select_step and ``val_prompts: null`` the
    validation would only cost time (250 prompts x 8 samples every 45 steps in the paper's grid). 0: never.
    """
    if settings.val_prompts == 0:
        return False
    return settings.checkpoints.select_step == "best_val_reward" or settings.val_prompts is not None


def eval_batch_per_device(settings: GRPOConfig, world: int) -> int:
    """Validation completions per process and vLLM call: as many whole groups as one rollout gives a process.

    A rollout samples ``prompts_per_step`` groups over `world` processes in one vLLM call each; validation
    batches of one group each would make a validation of 250 prompts 32 calls per process (each one
    waking vLLM and re-syncing its weights) instead of 4. At least one group.
    """
    return settings.num_generations * max(1, settings.prompts_per_step // world)


def trl_grpo_args(settings: GRPOConfig, out: Path, fmt: ThinkingFormat, *, has_val: bool, use_vllm: bool,
                  world: int | None = None):
    """TRL's GRPOConfig with every reference setting given explicitly (a pure function of the config).

    One rollout is TRL's generation batch (``prompts_per_step x num_generations`` completions); one
    optimizer update accumulates ``prompts_per_update x num_generations`` of them, so a rollout of 128
    prompts with updates of 64 makes two updates, as verl's ``ppo_mini_batch_size`` did. `world`:
    processes of the job ($WORLD_SIZE when None).
    """
    from trl import GRPOConfig as TRLGRPOConfig

    world = world_size() if world is None else world
    evaluates = has_val and validates(settings)
    completions_per_rollout = settings.prompts_per_step * settings.num_generations
    completions_per_update = (settings.prompts_per_update or settings.prompts_per_step) * settings.num_generations
    per_device = min(settings.per_device_train_batch_size, completions_per_update)
    stops = fmt.stop_strings
    gen_kwargs: dict[str, Any] | None = None
    if stops and use_vllm:
        gen_kwargs = {"stop": stops, "include_stop_str_in_output": True}
    return TRLGRPOConfig(
        output_dir=str(out),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=run_max_steps(settings),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation_steps(completions_per_update, per_device,
                                                       "prompts_per_update x num_generations", world=world),
        generation_batch_size=completions_per_rollout,
        num_generations=settings.num_generations,
        temperature=settings.rollout.temperature,
        top_p=settings.rollout.top_p,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=settings.rollout.max_completion_length,
        beta=settings.beta,
        use_bias_correction_kl=False,
        sync_ref_model=False,  # verl's reference model is the initial policy throughout
        entropy_coef=settings.entropy_coef,
        use_adaptive_entropy=False,
        top_entropy_quantile=1.0,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon,  # verl's clip_ratio_high defaults to clip_ratio
        delta=None,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        num_iterations=settings.num_iterations,
        mask_truncated_completions=False,
        importance_sampling_level="token",
        vllm_importance_sampling_correction=settings.vllm_importance_sampling_correction,
        off_policy_mask_threshold=None,
        vllm_gpu_memory_utilization=settings.rollout.vllm_gpu_memory_utilization,
        vllm_max_model_length=settings.rollout.context_length,
        vllm_enable_sleep_mode=settings.rollout.vllm_enable_sleep_mode,
        weight_decay=settings.weight_decay,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        max_grad_norm=settings.max_grad_norm,
        **precision_args(settings.bf16),
        gradient_checkpointing=settings.gradient_checkpointing,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        generation_kwargs=gen_kwargs,
        remove_unused_columns=False,
        shuffle_dataset=True,
        save_strategy="steps",
        save_steps=settings.checkpoints.save_steps,
        save_total_limit=None,  # CheckpointCallback keeps the last N step-<N> dirs
        eval_strategy="steps" if evaluates else "no",
        eval_steps=settings.checkpoints.save_steps if evaluates else None,
        per_device_eval_batch_size=eval_batch_per_device(settings, world),
        logging_steps=1,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        log_completions=False,
    )


def train_grpo(policy_dir: str | Path, reward: Any, train_path: str | Path,
               val_path: str | Path | None, out: str | Path, settings: GRPOConfig, *,
               callbacks: list | None = None) -> Path:
    """Train `policy_dir` with GRPO; write ``out/step-<N>/`` checkpoints and ``out/final/``; return final.

    `reward`: the cell's :class:`rlmt.rewards.NamedReward` (its ``reward_models`` entry and input
    files, built here on this rank's device), a classifier reward-model dir, or an
    :class:`rlmt.rewards.AnswerReward` built already with the policy's format (e.g. a
    :class:`rlmt.rewards.RuleReward` in tests); see :func:`rlmt.train.job.cell_reward`. TRL sees it
    as one reward function, ``answer_reward``. Rerunning after a crash resumes from the newest
    complete checkpoint.

    Under a launcher the process state comes first, the reward model next (a full copy on this
    rank's device), then TRL's arguments and only then the policy (see :mod:`rlmt.train.job`).
    """
    from rlmt.models.loading import load_causal_lm, load_tokenizer

    state = process_state()
    device = rank_device(state)
    out = Path(out)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.discard_incomplete(out)
    state.wait_for_everyone()
    resume = ckpt.latest_checkpoint(out)
    fmt = ThinkingFormat.load(policy_dir)
    use_vllm = vllm_wanted(settings.rollout.use_vllm)

    tokenizer = load_tokenizer(policy_dir, padding_side="left")
    train_ds, too_long = _prompt_dataset(train_path, tokenizer, settings.rollout.max_prompt_length)
    check_select_step_reached(settings, len(train_ds))
    val_ds = None
    if val_path and validates(settings):
        val_ds = _prompt_dataset(val_path, tokenizer, settings.rollout.max_prompt_length)[0]
        if settings.val_prompts is not None:
            val_ds = val_ds.select(range(min(settings.val_prompts, len(val_ds))))
    log_setup({"prompts_train": len(train_ds), "prompts_left_truncated": too_long,
                "prompts_val": len(val_ds) if val_ds is not None else 0, "format": fmt.name, "use_vllm": use_vllm})

    answer_reward = cell_reward(reward, fmt, strict=settings.strict, device=device)
    note_reward_loaded(answer_reward)
    buffer = SampleBuffer()
    reward_func = AnswerRewardWithLogging(answer_reward, tokenizer, buffer=buffer)

    # TRL's arguments before the policy: under ZeRO-3 they make the DeepSpeed config known, so the
    # policy is partitioned as it loads.
    args = trl_grpo_args(settings, out, fmt, has_val=val_ds is not None, use_vllm=use_vllm)
    model = load_causal_lm(policy_dir, device=device, dtype=weights_dtype(settings.bf16))
    note_loaded("policy", model)
    if fmt.stop_strings and not use_vllm:
        _stop_at_strings(model, tokenizer, fmt.stop_strings)
    ckpt_cb = CheckpointCallback(out, fmt, keep_last=settings.checkpoints.save_total_limit,
                                 select_rule=settings.checkpoints.select_step, val_metric=VAL_METRIC)
    trainer_cls = left_truncating_trainer(settings.rollout.max_prompt_length)
    trainer = trainer_cls(model=model, reward_funcs=reward_func, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                          processing_class=tokenizer,
                          callbacks=[MLflowMetricsCallback(), SamplesTableCallback(buffer, settings.log_samples_every),
                                     DiagnosticsCallback(reward_func.rollouts, out, fresh=resume is None),
                                     ckpt_cb, *(callbacks or [])])
    train_from(trainer, resume)
    if state.is_main_process:
        conclude_run(out)  # the length verdict over every step's rollouts: diagnostics/verdict.json + MLflow tag
    report_rank("grpo", state, trainer.accelerator.unwrap_model(trainer.model),
                devices={"reward": reward_device(answer_reward)})
    return finish(out, fmt, settings.checkpoints.select_step, trainer.accelerator)
