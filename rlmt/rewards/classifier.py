"""The answer-only reward: a Bradley-Terry reward model scores the policy's answer, never its thought.

This is the heart of RLMT (PAPER.md §2.4). For each (prompt, output):

1. :func:`rlmt.thinking.extract` splits the raw output by the policy's :class:`ThinkingFormat`;
   only the answer goes on (``strict``: a malformed output becomes the literal ``[NULL]``).
2. The conversation is rebuilt as the prompt's turns plus ``{"role": "assistant", "content":
   answer}`` and rendered by the **reward model's own** tokenizer and chat template. The policy's
   template (and, for zero models, the instruction that lives in it) never reaches the reward model.
3. Inputs longer than the reward model's budget lose tokens from the *left of the prompt*: the
   oldest turns first, then the start of the earliest remaining turn. The answer is never cut
   unless the answer alone exceeds the budget; then its *end* goes and the item is counted.
4. Inputs are scored in length buckets (sorted by length, padded per bucket to the bucket's
   longest, at most ``max_tokens_per_batch`` padded tokens per forward, no row under 80% of the
   bucket's width), then put back in order. Each distinct input is scored once, so equal inputs
   get bit-identical rewards (the same row at two positions of a padded batch may not).
   Right padding with the model's own pad id keeps every real token at the position it has
   when scored alone, and lets ``*ForSequenceClassification`` pool its scalar at the last real
   token, exactly as it does for one unpadded input.

This is the ``classifier`` reward kind (``reward_models.<name>.kind: classifier``, the default):
:class:`RewardModelSpec` is its config entry, :data:`KIND` its registry entry. Step 1 happens once,
in :meth:`rlmt.rewards.base.AnswerReward.score`, before :meth:`AnswerRewardScorer.score_answers`
sees the items; the same object serves GRPO (``as_trl_reward_func``), PPO, the DPO pair builder and
the ``reward-winrate`` benchmark, so every consumer optimises and measures the same reward. Its
counts (``Scored.counts``): ``prompt_truncated``, ``answer_truncated``.

Imports nothing heavy at module level (``rlmt.config`` imports the spec): torch and transformers
load inside the scorer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from rlmt.algorithms.settings import Strict
from rlmt.rewards.base import AnswerItem, AnswerReward, Messages, Scored
from rlmt.rewards.registry import BuildContext, RewardKind
from rlmt.thinking import ThinkingFormat

log = logging.getLogger(__name__)

BUCKET_MIN_FILL = 0.8  # a row of a length bucket is at least this fraction of the bucket's longest row


# ---------------------------------------------------------------------- the config entry


class RewardModelTrainSpec(Strict):
    """A reward model the pipeline trains itself (``rlmt data rm-pairs`` then ``rlmt train rm``).

    Pairs: chosen = a strong reference answer, rejected = the ``policy`` model's own answer to the same
    instruction; instructions shared with any training mixture or benchmark of the plan are excluded.
    """

    backbone: str = Field(description="Model (a `models` entry) whose prepared dir is the reward model's "
                          "backbone and chat template.")
    policy: str | None = Field(default=None, description="Model (a `models` entry) whose own answers are the "
                               "rejected side (None: the backbone).")
    reference: str = Field(description="Strong reference answers: JSON(L) rows with `instruction` and `output` "
                           "(AlpacaEval's GPT-4 baseline outputs); '{data_dir}' expands to the data directory.")
    limit: int | None = Field(default=None, ge=2, description="Use at most this many reference rows (after exclusion).")
    max_new_tokens: int = Field(default=256, ge=1, description="The policy's answer budget for the rejected side.")
    max_length_ratio: float | None = Field(
        default=None, ge=1, description="Length balance: keep a pair only when its longer answer has at most this "
        "many times the shorter one's tokens (the policy's tokenizer; dropped pairs counted in pairs.stats.json). "
        "None: off.")
    min_shorter_chosen_share: float | None = Field(
        default=None, gt=0, lt=1, description="Length balance: at least this share of the pairs has the chosen "
        "answer shorter than the rejected one; pairs with the chosen answer not shorter are dropped, the most "
        "lopsided (chosen/rejected token ratio) first, until it holds (counted). None: off.")
    keep_layers: int | None = Field(default=None, ge=1, description="Keep only the first N decoder layers of the "
                                    "backbone (the CPU budget's choice; None: all).")
    learning_rate: float = Field(default=2e-5, gt=0)
    epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=4, ge=1, description="Pairs per step.")
    max_length: int = Field(default=768, ge=8, description="Longer pairs are dropped (counted in rm_eval.json).")
    seed: int = 0


class RewardModelSpec(Strict):
    """A Bradley-Terry reward model (``AutoModelForSequenceClassification`` with one label): kind ``classifier``.

    Either prepared from ``source`` or trained by the pipeline (``train``): exactly one of them. Its
    model directory is ``results/models/<name>`` either way (the job's input ``<name>``).
    """

    kind: Literal["classifier"] = Field(default="classifier", description="Reward kind (the default).")
    source: str | None = Field(default=None, description="Hugging Face id, local directory or 'tiny:<name>'.")
    train: RewardModelTrainSpec | None = Field(default=None, description="Train this reward model in the pipeline.")
    revision: str | None = None
    trust_remote_code: bool = False
    max_length: int = Field(default=4096, description="Token budget of one reward-model input.")
    max_tokens_per_batch: int = Field(default=16384, ge=1, description="Padded tokens per reward-model forward pass "
                                      "(length-bucketed batches; 1 scores one answer at a time).")

    def describe(self, name: str, results_root: str | Path = "results") -> str:
        """One line for the report: where the model comes from."""
        if self.train is not None:
            t = self.train
            balance = [f"length ratio <= {t.max_length_ratio}"] if t.max_length_ratio else []
            balance += [f">= {t.min_shorter_chosen_share:.0%} of pairs with the shorter answer chosen"] \
                if t.min_shorter_chosen_share else []
            return (f"Bradley-Terry classifier trained here on {t.backbone}"
                    + (f" (first {t.keep_layers} layers)" if t.keep_layers else "")
                    + (f"; length-balanced pairs: {', '.join(balance)}" if balance else ""))
        return f"Bradley-Terry classifier `{self.source}`"

    @model_validator(mode="after")
    def _one_origin(self) -> "RewardModelSpec":
        if (self.source is None) == (self.train is None):
            raise ValueError("give exactly one of 'source' (a model to prepare) or 'train' (a model the pipeline trains)")
        return self


# ---------------------------------------------------------------------- the scorer


@dataclass
class _Encoded:
    ids: list[int]
    text: str
    prompt_truncated: bool = False
    answer_truncated: bool = False


class AnswerRewardScorer(AnswerReward):
    """Scores policy outputs with a reward model that sees only the extracted answer.

    Equal items get bit-identical floats (each distinct reward-model input is scored once), and so
    does a second call on the same items.

    Args:
        reward_model_dir: an ``AutoModelForSequenceClassification`` directory (safetensors) with one
            label, or with its own code and a scalar ``score`` output (see
            :func:`rlmt.models.loading.load_reward_model`).
        fmt: the *policy's* thinking format (its ``longcot_config.json``).
        strict: score malformed outputs as ``[NULL]`` (the reference's ``reward_model.strict``).
        max_tokens_per_batch: padded tokens per forward pass (rows x longest row of the bucket);
            an input longer than the budget is scored alone. ``1`` scores one input at a time.
        max_length: token budget of one reward-model input; default: the smaller of the
            tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``.
        device, dtype: ``"auto"`` is bf16 on a GPU, fp32 on CPU.
        trust_remote_code: off unless the reward model's config names it.
    """

    def __init__(self, reward_model_dir: str | Path, fmt: ThinkingFormat, *, strict: bool = False,
                 max_tokens_per_batch: int = 16384, max_length: int | None = None, device: str = "auto",
                 dtype: str | None = "auto", trust_remote_code: bool = False) -> None:
        from rlmt.models.loading import load_reward_model, load_tokenizer, resolve_device

        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}")
        super().__init__(fmt, strict=strict)
        self.reward_model_dir = Path(reward_model_dir)
        self.max_tokens_per_batch = max_tokens_per_batch
        self.device = resolve_device(device)
        self.tokenizer = load_tokenizer(self.reward_model_dir, trust_remote_code=trust_remote_code)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{self.reward_model_dir}: the reward model's tokenizer has no chat template; "
                             "the answer-only reward renders every input with the reward model's own template")
        self.model = load_reward_model(self.reward_model_dir, device=self.device, dtype=dtype,
                                       trust_remote_code=trust_remote_code)
        limits = [n for n in (getattr(self.tokenizer, "model_max_length", None),
                              getattr(self.model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and 0 < n < 10**8]
        self.max_length = max_length or (min(limits) if limits else 4096)
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        # The model pools at the rightmost token that is not its pad id. When the config names
        # no pad id it pools at the last position, so each bucket is padded with an id absent
        # from its rows (see _pad_id_for).
        self._config_pad_id = self.model.config.pad_token_id
        self._system_supported: bool | None = None

    @classmethod
    def from_spec(cls, reward_model_dir: str | Path, fmt: ThinkingFormat, spec: Any, *, strict: bool = False,
                  device: str = "auto", dtype: str | None = "auto") -> "AnswerRewardScorer":
        """A scorer with a config's :class:`RewardModelSpec` settings (max_length, batch budget, trust_remote_code)."""
        return cls(reward_model_dir, fmt, strict=strict, max_tokens_per_batch=spec.max_tokens_per_batch,
                   max_length=spec.max_length, device=device, dtype=dtype, trust_remote_code=spec.trust_remote_code)

    # ------------------------------------------------------------------ building the input

    def reward_messages(self, prompt_messages: Sequence[dict], answer: str) -> Messages:
        """The conversation the reward model judges: the prompt's turns plus the answer."""
        if not prompt_messages:
            raise ValueError("a reward prompt needs at least one user turn, got an empty conversation")
        turns: Messages = []
        for i, m in enumerate(prompt_messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"prompt turn {i} is not a {{'role', 'content'}} message: {m!r}")
            turns.append({"role": m["role"], "content": m["content"]})
        if not any(m["role"] == "user" for m in turns):
            raise ValueError(f"a reward prompt needs a user turn, got roles {[m['role'] for m in turns]}")
        return [*turns, {"role": "assistant", "content": answer}]

    def _render(self, messages: Messages) -> str:
        """Render with the reward model's template; fold system turns into the first user turn if it refuses them."""
        has_system = any(m["role"] == "system" for m in messages)
        if has_system and self._system_supported is False:
            return self.tokenizer.apply_chat_template(_fold_system(messages), tokenize=False)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        except Exception:
            if not has_system or self._system_supported is not None:
                raise
            self._system_supported = False
            log.warning("%s: the reward model's chat template rejects system turns; their text is "
                        "prepended to the first user turn", self.reward_model_dir)
            return self.tokenizer.apply_chat_template(_fold_system(messages), tokenize=False)
        if has_system:
            self._system_supported = True
        return text

    def _tokenize(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        add_special = not (bos and text.startswith(bos))  # the template already wrote BOS
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def _encode(self, prompt_messages: Sequence[dict], answer: str) -> _Encoded:
        messages = self.reward_messages(prompt_messages, answer)
        text = self._render(messages)
        ids = self._tokenize(text)
        if len(ids) <= self.max_length:
            return _Encoded(ids, text)
        return self._truncate_left(messages)

    def _truncate_left(self, messages: Messages) -> _Encoded:
        """Cut tokens from the left of the prompt until the rendered input fits."""
        prompt, answer_turn = [dict(m) for m in messages[:-1]], messages[-1]
        while True:
            text = self._render([*prompt, answer_turn])
            ids = self._tokenize(text)
            overflow = len(ids) - self.max_length
            if overflow <= 0:
                return _Encoded(ids, text, prompt_truncated=True)
            first = prompt[0]
            content_ids = self.tokenizer(first["content"], add_special_tokens=False)["input_ids"]
            if len(prompt) > 1 and len(content_ids) <= overflow:
                prompt.pop(0)
                while len(prompt) > 1 and prompt[0]["role"] != "user":
                    prompt.pop(0)  # a conversation starts with a user turn after the cut
                continue
            if content_ids:
                first["content"] = self.tokenizer.decode(content_ids[min(overflow, len(content_ids)):])
                continue
            # Only an empty user turn is left: the answer alone is over budget; keep its start.
            log.warning("reward input of %d tokens exceeds max_length=%d with an empty prompt; its end is cut",
                        len(ids), self.max_length)
            ids = ids[: self.max_length]
            return _Encoded(ids, self.tokenizer.decode(ids), prompt_truncated=True, answer_truncated=True)

    def reward_input(self, prompt_messages: Sequence[dict], output: str) -> str:
        """The exact text the reward model sees for this raw policy output (after any truncation)."""
        return self._encode(prompt_messages, self.extract(output).answer).text

    # ------------------------------------------------------------------ scoring

    kind = "classifier"

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        """One reward per already-extracted answer, in order (the answer-only reward of the module docstring)."""
        encoded = [self._encode(item.prompt, item.answer) for item in items]
        scores = self.score_token_ids([e.ids for e in encoded], progress=progress)
        return Scored(
            scores=scores,
            counts={"prompt_truncated": sum(e.prompt_truncated for e in encoded),
                    "answer_truncated": sum(e.answer_truncated for e in encoded)},
            reward_inputs=[e.text for e in encoded],
            input_lengths=[len(e.ids) for e in encoded],
        )

    def score_token_ids(self, sequences: Sequence[Sequence[int]], *, progress: bool = False) -> list[float]:
        """Scores of already-rendered reward-model inputs, length-bucketed by the token budget.

        Each distinct input is scored once and its score given to every copy: the same input at two
        rows of a padded batch can differ in its last bits, and equal inputs must get equal rewards
        (a GRPO group's identical completions, a DPO tie, a win-rate tie).
        """
        import torch

        first: dict[tuple[int, ...], int] = {}
        slot = [first.setdefault(tuple(s), len(first)) for s in sequences]
        distinct = list(first)
        scores: list[float] = [0.0] * len(distinct)
        buckets = length_buckets([len(s) for s in distinct], self.max_tokens_per_batch)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(distinct), desc="reward", unit="answer")
        with torch.inference_mode():
            for bucket in buckets:
                rows = [list(distinct[i]) for i in bucket]
                for i, value in zip(bucket, self._forward(rows)):
                    scores[i] = value
                if bar is not None:
                    bar.update(len(bucket))
        if bar is not None:
            bar.close()
        return [scores[k] for k in slot]

    def _pad_id_for(self, rows: list[list[int]]) -> int:
        if self._config_pad_id is not None:
            return self._config_pad_id
        used = {t for r in rows for t in r}
        preferred = self.tokenizer.pad_token_id
        if preferred is not None and preferred not in used:
            return preferred
        return next(t for t in range(self.model.config.vocab_size) if t not in used)

    def _forward(self, rows: list[list[int]]) -> list[float]:
        import torch

        from rlmt.models.loading import reward_scalars

        if any(not r for r in rows):
            raise ValueError("an empty reward-model input (0 tokens) cannot be scored")
        width = max(len(r) for r in rows)
        pad_id = self._pad_id_for(rows)
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):  # right padding: real tokens keep their unpadded positions
            input_ids[j, : len(r)] = torch.tensor(r, dtype=torch.long)
            attention_mask[j, : len(r)] = 1
        text_config = self.model.config.get_text_config()
        saved = text_config.pad_token_id
        text_config.pad_token_id = pad_id
        try:
            output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
        finally:
            text_config.pad_token_id = saved
        return [float(v) for v in reward_scalars(output, self.reward_model_dir).float().cpu()]

    def close(self) -> None:
        """Drop the model (DPO frees the GPU before training)."""
        self.model = None


# ---------------------------------------------------------------------- helpers


def length_buckets(lengths: Sequence[int], max_tokens_per_batch: int, min_fill: float = BUCKET_MIN_FILL) -> list[list[int]]:
    """Group indices into batches of similar length.

    Sort longest first; a batch takes the next row while rows x longest row stays within the
    token budget *and* the row fills at least `min_fill` of the batch's width, so no row is more
    than ``1 - min_fill`` padding (a mixed-length batch spends its compute on pad tokens and its
    attention grows with the square of the width). A row longer than the budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    buckets: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and (width * (len(current) + 1) > max_tokens_per_batch or lengths[i] < min_fill * width):
            buckets.append(current)
            current = []
        if not current:
            width = lengths[i]
        current.append(i)
    if current:
        buckets.append(current)
    return buckets


def _fold_system(messages: Messages) -> Messages:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}" if system else m["content"]
            break
    return rest


# ---------------------------------------------------------------------- the registry entry


def _build(name: str, spec: RewardModelSpec, context: BuildContext) -> AnswerRewardScorer:
    model_dir = context.inputs.get(name)
    if model_dir is None:
        raise ValueError(f"reward {name!r} (kind classifier) needs its model directory as input {name!r} "
                         f"(got inputs {sorted(context.inputs)}); on the command line: --reward-input {name}=DIR "
                         "or --reward-model DIR")
    return AnswerRewardScorer.from_spec(model_dir, context.fmt, spec, strict=context.strict, device=context.device)


def _inputs(name: str, spec: RewardModelSpec, specs: Mapping[str, Any]) -> dict[str, str]:
    """Its model directory, ``models/<name>`` (prepared from ``source`` or trained by rule ``train_rm``)."""
    return {name: f"models/{name}"}


KIND = RewardKind(name="classifier", spec=RewardModelSpec, build=_build, inputs=_inputs,
                  doc="A Bradley-Terry reward model scores the extracted answer, rendered with its own chat template.")
