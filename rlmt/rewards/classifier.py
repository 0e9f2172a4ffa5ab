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

The same :class:`AnswerRewardScorer` serves GRPO (through :meth:`AnswerRewardScorer.as_trl_reward_func`),
PPO and the DPO pair builder, so every algorithm optimises the same reward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlmt.thinking import Extraction, ThinkingFormat, extract

log = logging.getLogger(__name__)

Messages = list[dict]
BUCKET_MIN_FILL = 0.8  # a row of a length bucket is at least this fraction of the bucket's longest row


@dataclass
class RewardBatch:
    """Scores of one call to :meth:`AnswerRewardScorer.score`, in input order."""

    scores: list[float]
    extractions: list[Extraction]
    malformed_fraction: float
    n_prompt_truncated: int = 0  # inputs whose prompt lost tokens from the left
    n_answer_truncated: int = 0  # inputs whose answer alone exceeded the budget (its end was cut)
    reward_inputs: list[str] = field(default_factory=list, repr=False)  # exact text each RM input was rendered from
    input_lengths: list[int] = field(default_factory=list, repr=False)  # reward-model tokens per input


@dataclass
class _Encoded:
    ids: list[int]
    text: str
    prompt_truncated: bool = False
    answer_truncated: bool = False


class AnswerRewardScorer:
    """Scores policy outputs with a reward model that sees only the extracted answer.

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
        self.reward_model_dir = Path(reward_model_dir)
        self.fmt = fmt
        self.strict = strict
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
        """A scorer with a config's :class:`rlmt.config.RewardModelSpec` settings (max_length, batch budget)."""
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
        answer = extract(output, self.fmt, self.strict).answer
        return self._encode(prompt_messages, answer).text

    # ------------------------------------------------------------------ scoring

    def score(self, prompts: Sequence[Sequence[dict]], outputs: Sequence[str], *, progress: bool = False) -> RewardBatch:
        """One reward per (prompt, raw output), in input order."""
        if len(prompts) != len(outputs):
            raise ValueError(f"score() got {len(prompts)} prompts but {len(outputs)} outputs")
        extractions = [extract(o, self.fmt, self.strict) for o in outputs]
        encoded = [self._encode(p, e.answer) for p, e in zip(prompts, extractions)]
        scores = self.score_token_ids([e.ids for e in encoded], progress=progress)
        n = len(outputs)
        return RewardBatch(
            scores=scores,
            extractions=extractions,
            malformed_fraction=(sum(not e.well_formed for e in extractions) / n) if n else 0.0,
            n_prompt_truncated=sum(e.prompt_truncated for e in encoded),
            n_answer_truncated=sum(e.answer_truncated for e in encoded),
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

    # ------------------------------------------------------------------ TRL

    def as_trl_reward_func(self) -> Callable[..., list[float]]:
        """A reward function with TRL's signature, ``fn(prompts, completions, **kwargs) -> list[float]``.

        Prompts and completions may be plain strings (a string prompt is one user turn) or
        conversational (lists of message dicts; the completion's assistant text is scored). The
        last batch's :class:`RewardBatch` is kept on ``fn.last_batch`` for logging.
        """
        scorer = self

        def answer_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            prompt_messages = [_as_messages(p) for p in prompts]
            outputs = [_as_text(c) for c in completions]
            batch = scorer.score(prompt_messages, outputs)
            answer_reward.last_batch = batch  # type: ignore[attr-defined]
            return batch.scores

        answer_reward.last_batch = None  # type: ignore[attr-defined]
        return answer_reward


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


def _as_messages(prompt: Any) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return list(prompt)
    raise ValueError(f"a prompt must be a string or a list of message dicts, got {type(prompt).__name__}")


def _as_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
    raise ValueError(f"a completion must be a string or a list of message dicts, got {type(completion).__name__}")
