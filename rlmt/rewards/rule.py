"""A reward given as a Python function of each answer: the test and programmatic path, not a config kind.

``RuleReward(fmt, fn)`` is an :class:`~rlmt.rewards.base.AnswerReward` like any other, so it goes
wherever a reward goes (``train_grpo``, ``train_ppo``, DPO's pair builder, ``reward-winrate``) and gets
the same single extraction: ``fn`` sees an :class:`~rlmt.rewards.base.AnswerItem` (the prompt, the
extracted answer, the row's extra columns), never the raw output. It is not registered for
``reward_models``: a config names rewards whose scores are reproducible from files (a classifier,
a rubric, a mix of them); a function lives only in the process that made it.
"""

from __future__ import annotations

from typing import Callable, Sequence

from rlmt.rewards.base import AnswerItem, AnswerReward, Scored
from rlmt.thinking import ThinkingFormat


class RuleReward(AnswerReward):
    """One float per answer from `fn(item)`; e.g. ``RuleReward(WARM_NOTHINK, lambda it: len(it.answer) / 100)``.

    `fn` must be deterministic in the item (equal items, equal floats; a second call, the same floats),
    as every reward must.
    """

    kind = "rule"

    def __init__(self, fmt: ThinkingFormat, fn: Callable[[AnswerItem], float], *, strict: bool = False) -> None:
        super().__init__(fmt, strict=strict)
        self.fn = fn

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        return Scored(scores=[float(self.fn(item)) for item in items])
