"""Warm-start SFT (PAPER.md §4.5) on TRL's SFTTrainer with loss on the assistant turns only.

Input: a model dir (a base model's dir already carries its instruct family's chat template,
``rlmt models prepare`` copies it) and an SFT JSONL in the warm-start format (``messages`` with
the assistant turn built by :func:`rlmt.thinking.sft_messages`). Output: a model dir with the
right ``longcot_config.json`` — ``</think>`` for think data (the reference ``sft.py`` wrote the
wrong ``<response>``), none for nothink data. The format is read off the data itself, so a
think model can never be saved with a nothink config or the other way round.

Assistant-only loss needs ``{% generation %}`` markers
-----------------------------------------------------
TRL builds the loss mask from ``apply_chat_template(..., return_assistant_tokens_mask=True)``,
which only works when the template wraps assistant content in ``{% generation %} ...
{% endgeneration %}``. The tiny zoo's templates have them. The real templates do not:
TRL 1.16 swaps in a bundled training template for the ones it knows (Llama-3 and Qwen2.5's
ChatML among them), but not for Llama-3.1-8B-Instruct's template. For such a template set
``sft.chat_template_path`` to a Jinja file that renders the same text with the assistant
content (and its end-of-turn token, so the model learns to stop) inside the markers; training
stops with a message saying so rather than silently training on the prompt tokens. rlmt ships
``package:llama3_1_training`` and ``package:qwen2_5_training`` (rlmt/resources/chat_templates/);
a configured template is checked against the model's own before any step: the same text, and
a mask of exactly the assistant turns.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rlmt.config import SFTConfig
from rlmt.jsonl import iter_json_lines
from rlmt.thinking import WARM_NOTHINK, WARM_THINK, ThinkingFormat
from rlmt.train import checkpoints as ckpt
from rlmt.train.callbacks import CheckpointCallback, MLflowMetricsCallback
from rlmt.train.job import note_loaded, process_state, rank_device, report_rank, train_from
from rlmt.train.runtime import TrainingSetupError, accumulation_steps, precision_args, weights_dtype


def read_sft_rows(path: str | Path) -> list[dict]:
    """SFT rows (``messages`` ending with an assistant turn); a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data not found: {path}")
    rows = []
    for n, row in iter_json_lines(path, TrainingSetupError):
        msgs = row.get("messages")
        if not isinstance(msgs, list) or len(msgs) < 2 or msgs[-1].get("role") != "assistant":
            raise TrainingSetupError(f"{path}:{n}: 'messages' must be a list ending with an assistant turn")
        rows.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
    if not rows:
        raise TrainingSetupError(f"{path}: no SFT examples")
    return rows


def data_format(rows: list[dict]) -> ThinkingFormat:
    """WARM_THINK when every assistant turn is ``<think>…</think>…``, WARM_NOTHINK when none is; mixed is an error."""
    thinks = [r["messages"][-1]["content"].lstrip().startswith("<think>") and "</think>" in r["messages"][-1]["content"]
              for r in rows]
    if all(thinks):
        return WARM_THINK
    if not any(thinks):
        return WARM_NOTHINK
    raise TrainingSetupError(f"SFT data mixes think ({sum(thinks)}) and nothink ({len(thinks) - sum(thinks)}) examples")


def _check_template(tokenizer, chat_template_path: str | None) -> str | None:
    """The training template file to hand TRL (None: the model's own), checked against the model's template.

    A configured template (``package:<name>`` or a .jinja path) must render the model's own text with an
    assistant mask of exactly the assistant turns (:func:`rlmt.resources.chat_templates.template_problems`).
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    from rlmt.resources import chat_templates

    if chat_template_path:
        try:
            path = chat_templates.resolve(chat_template_path)
        except chat_templates.TemplateError as err:
            raise TrainingSetupError(f"sft.{err}") from None
        if tokenizer.chat_template:
            known = chat_templates.shipped(chat_template_path)
            problems = chat_templates.template_problems(
                tokenizer.chat_template, path.read_text(),
                end_of_turn=known.end_of_turn if known else tokenizer.eos_token,
                bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)
            if problems:
                raise TrainingSetupError(f"sft.chat_template_path {chat_template_path!r} does not fit this model's "
                                         "chat template: " + "; ".join(problems))
        return str(path)
    if has_generation_markers(tokenizer.chat_template or ""):
        return None
    if not tokenizer.chat_template:
        raise TrainingSetupError("the model has no chat template; prepare base models with chat_template_from")
    try:
        get_training_chat_template(tokenizer)
    except ValueError:
        raise TrainingSetupError(
            "assistant-only loss needs {% generation %} markers in the chat template, this template has none and "
            "TRL has no training version of it: set sft.chat_template_path to a Jinja file with the markers "
            "(package:llama3_1_training and package:qwen2_5_training are shipped; see rlmt/train/sft.py)") from None
    return None


def trl_sft_args(settings: SFTConfig, work: Path, *, chat_template_path: str | None, world: int | None = None):
    """TRL's SFTConfig for `settings` (a pure function of the config: no model, no data)."""
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        output_dir=str(work),
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=accumulation_steps(settings.global_batch_size,
                                                       settings.per_device_train_batch_size, world=world),
        warmup_steps=settings.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=settings.lr_scheduler_type,
        weight_decay=settings.weight_decay,
        adam_beta1=settings.adam_beta1,
        adam_beta2=settings.adam_beta2,
        max_length=settings.max_length,
        assistant_only_loss=True,
        chat_template_path=chat_template_path,
        gradient_checkpointing=settings.gradient_checkpointing,
        **precision_args(settings.bf16),
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=None,  # CheckpointCallback keeps the last N step-<N> dirs
        logging_steps=1,
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        dataset_num_proc=None,
        disable_tqdm=False,
    )


def train_sft(model_dir: str | Path, data_path: str | Path, out: str | Path, settings: SFTConfig, *,
              expect_think: bool | None = None) -> Path:
    """Fine-tune `model_dir` on `data_path`; write the model dir `out` (atomically) and return it.

    Checkpoints go to ``<out>.work/step-<N>/``; a rerun after a crash resumes from the newest one,
    and the work dir is removed once `out` is in place.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    from rlmt.models.loading import load_causal_lm, load_tokenizer

    out = Path(out)
    rows = read_sft_rows(data_path)
    fmt = data_format(rows)
    if expect_think is not None and fmt.thinks != expect_think:
        raise TrainingSetupError(f"{data_path}: the cell wants {'think' if expect_think else 'nothink'} data, "
                                 f"the file holds {fmt.name} examples")
    state = process_state()  # first: the process group and this rank's device (rlmt.train.job)
    work = Path(str(out) + ".work")
    if state.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        ckpt.discard_incomplete(work)
    state.wait_for_everyone()
    resume = ckpt.latest_checkpoint(work)

    tokenizer = load_tokenizer(model_dir)
    template_file = _check_template(tokenizer, settings.chat_template_path)
    # TRL's arguments before the model: under ZeRO-3 the model is then partitioned as it loads.
    args = trl_sft_args(settings, work, chat_template_path=template_file)
    model = load_causal_lm(model_dir, device=rank_device(state),
                           dtype=weights_dtype(settings.bf16))
    note_loaded("policy", model)
    callbacks = [MLflowMetricsCallback(),
                 CheckpointCallback(work, fmt, keep_last=settings.save_total_limit)]
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=callbacks)
    train_from(trainer, resume)
    report_rank("sft", state, trainer.accelerator.unwrap_model(trainer.model))

    tmp = Path(str(out) + ".tmp")
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # collective under DeepSpeed/FSDP; writes on the main process only
    if not accelerator.is_main_process:  # the rest is file shuffling: one process does it
        accelerator.wait_for_everyone()
        return out
    tokenizer.save_pretrained(str(tmp))
    for junk in ("training_args.bin",):
        (tmp / junk).unlink(missing_ok=True)
    ckpt.write_format(tmp, fmt)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out
