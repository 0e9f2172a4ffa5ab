"""Train a Bradley-Terry reward model (``rlmt train rm``) with TRL's ``RewardTrainer``.

Input: a pairs file (JSON lines ``{"id", "prompt": [messages], "chosen": str, "rejected": str}``,
built by :mod:`rlmt.data.rm_pairs`) and a causal-LM backbone dir. Output: an
``AutoModelForSequenceClassification`` dir with one label, the backbone's tokenizer and chat
template, and ``rm_eval.json`` with the held-out pairwise accuracy, so the answer-only scorer
(:class:`rlmt.rewards.AnswerRewardScorer`) uses it unchanged.

- Inputs are tokenized here exactly as the scorer tokenizes them (the reward model's own chat
  template, BOS only when the template did not write it), and handed to TRL pre-tokenized
  (``chosen_ids``/``rejected_ids``), so the model is trained on the very token sequence it will
  pool its score at. TRL's text path would append an EOS after the template's own end of turn.
- The held-out split (``eval_fraction``, a tenth by default) is chosen by a hash of each pair's id
  and the seed: the same pairs are held out on every rerun and whatever the file order.
- Held-out accuracy is measured through :class:`rlmt.rewards.AnswerRewardScorer` on the saved dir:
  the number reported is the one the RL stages will see. Beside it, the reward's length bias on the
  same held-out answers (chosen and rejected alike): the Pearson and Spearman correlation of reward
  with answer length (the answer's own tokens in the reward model's tokenizer), and the accuracy on
  the pairs whose chosen answer is the shorter one (a model that learned "longer wins" fails those).
- ``keep_layers`` keeps only the first N decoder layers of the backbone: on a 2-core CPU a full
  135M-parameter backbone costs ~2 s per pair and step; a shallower one is the budget's choice
  (stated in the config that sets it).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from rlmt.jsonl import iter_json_lines
from rlmt.thinking import WARM_NOTHINK

EVAL_FILE = "rm_eval.json"
TIE_TOLERANCE = 1e-4  # |chosen - rejected| at or under this is a tie (float noise across batch shapes)


@dataclass
class RewardModelConfig:
    """Settings of ``rlmt train rm``.

    Attributes:
        learning_rate: AdamW learning rate (TRL's default for reward models is 1e-4; a few hundred
            pairs on a small backbone train well at 1e-5..5e-5).
        epochs: passes over the training pairs.
        batch_size: pairs per device per step (each pair is two sequences).
        gradient_accumulation_steps: steps per optimizer update.
        max_length: pairs whose chosen or rejected input exceeds this many tokens are dropped
            (counted in ``rm_eval.json``), as TRL drops them.
        eval_fraction: share of pairs held out for the pairwise accuracy.
        keep_layers: keep only the first N decoder layers of the backbone (None: all).
        center_rewards_coefficient: TRL's mean-zero reward regulariser (None: off).
        seed: data order, split and head initialisation.
    """

    learning_rate: float = 2e-5
    epochs: int = 1
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 768
    eval_fraction: float = 0.1
    keep_layers: int | None = None
    center_rewards_coefficient: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {self.eval_fraction}")
        if self.keep_layers is not None and self.keep_layers < 1:
            raise ValueError(f"keep_layers must be >= 1, got {self.keep_layers}")


def read_pairs(path: str | Path) -> list[dict]:
    """The pairs of a JSON-lines file; a malformed line is an error naming its line number."""
    pairs = []
    for n, row in iter_json_lines(path, ValueError):
        missing = {"id", "prompt", "chosen", "rejected"} - set(row)
        if missing:
            raise ValueError(f"{path}:{n}: a pair needs {sorted(missing)}")
        pairs.append(row)
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


def held_out(pair_id: str, fraction: float, seed: int) -> bool:
    """Whether a pair is in the held-out tenth: a hash of its id, not its position in the file."""
    h = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split_pairs(pairs: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    train = [p for p in pairs if not held_out(str(p["id"]), fraction, seed)]
    held = [p for p in pairs if held_out(str(p["id"]), fraction, seed)]
    if not train or not held:
        raise ValueError(f"{len(pairs)} pairs give an empty train or held-out split at eval_fraction={fraction}")
    return train, held


def encode(tokenizer, prompt: Sequence[dict], answer: str) -> list[int]:
    """Token ids of prompt + answer as :class:`rlmt.rewards.AnswerRewardScorer` renders them."""
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def _backbone_as_reward_model(backbone_dir: Path, cfg: RewardModelConfig, pad_token_id: int):
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rlmt.models.loading import check_safetensors

    check_safetensors(backbone_dir)
    config = AutoConfig.from_pretrained(backbone_dir)
    config.num_labels = 1
    config.pad_token_id = pad_token_id
    if cfg.keep_layers is not None:
        if cfg.keep_layers > config.num_hidden_layers:
            raise ValueError(f"keep_layers={cfg.keep_layers} but {backbone_dir} has {config.num_hidden_layers} layers")
        config.num_hidden_layers = cfg.keep_layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: cfg.keep_layers]
    torch.manual_seed(cfg.seed)
    # The decoder weights come from the backbone (layers past keep_layers are simply not loaded);
    # the one-label score head is new.
    return AutoModelForSequenceClassification.from_pretrained(
        backbone_dir, config=config, use_safetensors=True, dtype=torch.float32)


def pairwise_accuracy(model_dir: str | Path, pairs: Sequence[dict], tie_tolerance: float = TIE_TOLERANCE) -> dict:
    """Share of pairs whose chosen answer the reward model scores above the rejected one, and its length bias.

    Scores within ``tie_tolerance`` of each other count as a tie (half a win): the same input scored
    in two differently padded batches may differ in its last bits, and that must not decide a pair.
    Length bias, over the 2n answers: ``reward_length_pearson``/``reward_length_spearman`` (None when
    the scores or the lengths are all equal), and ``pairwise_accuracy_chosen_shorter`` over the
    ``n_chosen_shorter`` pairs whose chosen answer has fewer tokens (None when there are none).
    """
    from rlmt.rewards import AnswerRewardScorer
    from rlmt.stats.correlation import pearson, spearman

    scorer = AnswerRewardScorer(model_dir, WARM_NOTHINK, device="cpu")
    prompts = [p["prompt"] for p in pairs]
    answers = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    scores = scorer.score(prompts + prompts, answers).scores
    chosen, rejected = scores[: len(pairs)], scores[len(pairs):]
    wins = [0.5 if abs(c - r) <= tie_tolerance else 1.0 if c > r else 0.0 for c, r in zip(chosen, rejected)]
    margins = sorted(c - r for c, r in zip(chosen, rejected))
    lengths = [len(ids) for ids in scorer.tokenizer(answers, add_special_tokens=False)["input_ids"]]
    shorter = [i for i in range(len(pairs)) if lengths[i] < lengths[len(pairs) + i]]
    return {"pairwise_accuracy": sum(wins) / len(pairs), "n": len(pairs),
            "median_margin": margins[len(margins) // 2],
            "reward_length_pearson": pearson(lengths, scores), "reward_length_spearman": spearman(lengths, scores),
            "n_answers": len(answers), "length_unit": "answer tokens (reward model's tokenizer)",
            "n_chosen_shorter": len(shorter),
            "pairwise_accuracy_chosen_shorter": (sum(wins[i] for i in shorter) / len(shorter)) if shorter else None}


def train_reward_model(backbone_dir: str | Path, pairs_path: str | Path, out: str | Path,
                       cfg: RewardModelConfig, *, callbacks: list | None = None) -> dict:
    """Train, save (safetensors, one label, the backbone's chat template) and report held-out accuracy."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from rlmt.models.loading import load_tokenizer

    backbone_dir, out = Path(backbone_dir), Path(out)
    pairs = read_pairs(pairs_path)
    train, held = split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    tokenizer = load_tokenizer(backbone_dir, padding_side="right")
    if not tokenizer.chat_template:
        raise ValueError(f"{backbone_dir}: the backbone's tokenizer has no chat template; a reward model needs one")
    rows, too_long = [], 0
    for p in train:
        chosen, rejected = encode(tokenizer, p["prompt"], p["chosen"]), encode(tokenizer, p["prompt"], p["rejected"])
        if max(len(chosen), len(rejected)) > cfg.max_length:
            too_long += 1
            continue
        rows.append({"chosen_ids": chosen, "rejected_ids": rejected})
    if not rows:
        raise ValueError(f"every training pair is longer than max_length={cfg.max_length} tokens")
    random.Random(cfg.seed).shuffle(rows)

    model = _backbone_as_reward_model(backbone_dir, cfg, tokenizer.pad_token_id)
    tmp = out.with_name(out.name + ".tmp")
    args = RewardConfig(
        output_dir=str(tmp / "trainer"), learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=None,  # filtered above, with the count kept
        center_rewards_coefficient=cfg.center_rewards_coefficient, seed=cfg.seed, bf16=False,
        gradient_checkpointing=False, logging_steps=5, save_strategy="no", report_to=[], disable_tqdm=False,
        dataloader_num_workers=0, use_cpu=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            processing_class=tokenizer, callbacks=callbacks)
    result = trainer.train()
    model = trainer.model
    model.config.use_cache = False
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(tmp / "trainer", ignore_errors=True)
    metrics = {"train_pairs": len(rows), "dropped_too_long": too_long, "held_out_pairs": len(held),
               "train_loss": float(result.training_loss), "config": asdict(cfg)}
    metrics["held_out"] = pairwise_accuracy(tmp, held)
    (tmp / EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return metrics
