"""The reward interface: one float per (conversation, answer), answer-only by construction.

Every reward kind (``classifier``, ``rubric``, ``mix``, the length terms) subclasses
:class:`AnswerReward` and implements one method, :meth:`AnswerReward.score_answers`, over
:class:`AnswerItem` rows that already hold the **extracted answer**. Extraction (splitting the raw
policy output into thought and answer by the policy's :class:`ThinkingFormat`, ``strict``: a malformed
output becomes ``[NULL]``) happens once, in :meth:`AnswerReward.score`, before any reward sees the
text: no reward kind can score a thought, and a ``mix`` does not extract twice.

The same object serves every consumer:

- GRPO: :meth:`AnswerReward.as_trl_reward_func` (TRL's ``fn(prompts, completions, **columns)``; the
  dataset's extra columns reach the reward as each item's ``extras``);
- PPO and DPO's pair builder: :meth:`AnswerReward.score` on raw outputs;
- the ``reward-winrate`` benchmark: :meth:`AnswerReward.score` on generations.

Imports nothing heavy: a kind's module imports torch or an HTTP client inside its functions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rlmt.thinking import Extraction, ThinkingFormat, extract

Messages = list[dict]


@dataclass(frozen=True)
class AnswerItem:
    """One thing to score: the conversation before the answer, the extracted answer, the row's other columns."""

    prompt: Messages
    answer: str
    extras: Mapping[str, Any] = field(default_factory=dict)  # e.g. "id", "rubric": never the raw output


@dataclass
class Scored:
    """What :meth:`AnswerReward.score_answers` returns, in item order.

    ``counts``: events worth a metric, by name (e.g. ``prompt_truncated``, ``judge_unparsed``); a kind
    that counts nothing leaves it empty. ``reward_inputs``/``input_lengths``: the exact text (and its
    token count) a model-based reward saw per item, where it has one.
    """

    scores: list[float]
    counts: dict[str, int] = field(default_factory=dict)
    reward_inputs: list[str] = field(default_factory=list)
    input_lengths: list[int] = field(default_factory=list)


@dataclass
class RewardBatch:
    """Scores of one call to :meth:`AnswerReward.score`, in input order."""

    scores: list[float]
    extractions: list[Extraction]
    malformed_fraction: float
    counts: dict[str, int] = field(default_factory=dict)
    reward_inputs: list[str] = field(default_factory=list, repr=False)  # exact text each reward input was rendered from
    input_lengths: list[int] = field(default_factory=list, repr=False)  # reward-model tokens per input

    @property
    def n_prompt_truncated(self) -> int:
        """Inputs whose prompt lost tokens from the left (classifier rewards)."""
        return self.counts.get("prompt_truncated", 0)

    @property
    def n_answer_truncated(self) -> int:
        """Inputs whose answer alone exceeded the reward model's budget (its end was cut)."""
        return self.counts.get("answer_truncated", 0)


class AnswerReward(ABC):
    """A reward over extracted answers. Subclasses implement :meth:`score_answers` only.

    Args:
        fmt: the *policy's* thinking format (its ``longcot_config.json``).
        strict: score malformed outputs as ``[NULL]`` (the reference's ``reward_model.strict``).
    """

    kind: str = ""  # the registry name, set by each subclass

    def __init__(self, fmt: ThinkingFormat, *, strict: bool = False) -> None:
        self.fmt = fmt
        self.strict = strict

    @abstractmethod
    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        """One float per item, in order. Equal items must get equal floats; so must a second call."""

    # ------------------------------------------------------------------ the one extraction

    def extract(self, output: str) -> Extraction:
        """The policy output split by the policy's format (``strict``: malformed -> ``[NULL]``)."""
        return extract(output, self.fmt, self.strict)

    def score(self, prompts: Sequence[Sequence[dict]], outputs: Sequence[str],
              extras: Sequence[Mapping[str, Any]] | None = None, *, progress: bool = False) -> RewardBatch:
        """One reward per (prompt, raw output), in input order; `extras`: each row's other columns."""
        if len(prompts) != len(outputs):
            raise ValueError(f"score() got {len(prompts)} prompts but {len(outputs)} outputs")
        if extras is not None and len(extras) != len(outputs):
            raise ValueError(f"score() got {len(outputs)} outputs but {len(extras)} extras rows")
        extractions = [self.extract(o) for o in outputs]
        items = [AnswerItem(list(p), e.answer, dict(extras[i]) if extras is not None else {})
                 for i, (p, e) in enumerate(zip(prompts, extractions))]
        scored = self.score_answers(items, progress=progress)
        if len(scored.scores) != len(items):
            raise RuntimeError(f"reward {self.kind!r} returned {len(scored.scores)} scores for {len(items)} answers")
        n = len(outputs)
        return RewardBatch(
            scores=[float(s) for s in scored.scores],
            extractions=extractions,
            malformed_fraction=(sum(not e.well_formed for e in extractions) / n) if n else 0.0,
            counts=dict(scored.counts),
            reward_inputs=list(scored.reward_inputs),
            input_lengths=list(scored.input_lengths),
        )

    # ------------------------------------------------------------------ TRL

    def as_trl_reward_func(self) -> Callable[..., list[float]]:
        """A reward function with TRL's signature, ``fn(prompts, completions, **kwargs) -> list[float]``.

        Prompts and completions may be plain strings (a string prompt is one user turn) or
        conversational (lists of message dicts; the completion's assistant text is scored). TRL passes
        the dataset's other columns as keyword lists; they become each item's ``extras`` (TRL's own
        keywords such as ``trainer_state`` and ``completion_ids`` are left out). The last batch's
        :class:`RewardBatch` is kept on ``fn.last_batch`` for logging.
        """
        reward = self

        def answer_reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
            prompt_messages = [as_messages(p) for p in prompts]
            outputs = [as_text(c) for c in completions]
            columns = {k: v for k, v in kwargs.items()
                       if k not in TRL_KEYWORDS and isinstance(v, (list, tuple)) and len(v) == len(outputs)}
            extras = [{k: v[i] for k, v in columns.items()} for i in range(len(outputs))]
            batch = reward.score(prompt_messages, outputs, extras)
            answer_reward.last_batch = batch  # type: ignore[attr-defined]
            return batch.scores

        answer_reward.last_batch = None  # type: ignore[attr-defined]
        return answer_reward

    def close(self) -> None:
        """Release what the reward holds (a model, an HTTP client); the default holds nothing."""


# keywords TRL's GRPOTrainer passes to a reward function that are not dataset columns
TRL_KEYWORDS = frozenset({"trainer_state", "completion_ids", "log_extra", "log_metric"})


def as_messages(prompt: Any) -> Messages:
    """A TRL prompt (a string is one user turn, or a list of message dicts) as messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and all(isinstance(m, dict) for m in prompt):
        return list(prompt)
    raise ValueError(f"a prompt must be a string or a list of message dicts, got {type(prompt).__name__}")


def as_text(completion: Any) -> str:
    """A TRL completion (a string, or messages whose assistant text is joined) as the raw output."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        return "".join(str(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")
    raise ValueError(f"a completion must be a string or a list of message dicts, got {type(completion).__name__}")
