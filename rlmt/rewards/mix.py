"""The ``mix`` reward kind: a weighted sum of other named rewards, each normalised over the batch first.

Config entry (``reward_models.<name>``)::

    kind: mix
    parts: {tiny-rm: 1.0, answer-length: 0.2}   # names of other reward_models entries -> weight
    normalise: batch_z

The rule (``normalise: batch_z``, the only one): for one scored batch of ``n`` answers, each part
``p`` scores every answer (``x_p``, the answers already extracted, once, before any part sees them);
its scores are z-normalised over the batch, ``z_p = (x_p - mean(x_p)) / std(x_p)`` with ``std`` the
*population* standard deviation (divide by ``n``); a part whose scores are all equal (``std`` 0, a
batch of one included) contributes 0 to every answer; the mix's score is ``sum_p weight_p * z_p``.
Normalising first means a classifier's logits (spread ~1) and a length term (spread ~100 tokens) do
not fight over scale: the weights say how much each part counts.

**Batch-relative.** A mix's score depends on the other answers of the batch it is scored in, and its
mean over a batch is 0 by construction. So:

- a comparison is only meaningful within one batch: the ``reward-winrate`` benchmark scores every
  policy and reference answer of the evaluation in a single :meth:`~rlmt.rewards.base.AnswerReward.score`
  call, so each pair's two answers are normalised together (same mean and std for both);
- the batch is what one call receives: a GRPO generation batch (one process's share), one PPO step's
  share of a process, one DPO process's share of the samples. GRPO and DPO compare answers within a
  prompt's group, which lies within one batch, so only the scale changes with the batch;
- a validation reward (``select_step: best_val_reward`` for GRPO and PPO) of a mix is 0 on every
  checkpoint: the config refuses that combination.

Parts may be any kind, a mix included; a part that is missing, or a chain of mixes that comes back to
itself, is a config error. Imports nothing heavy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

from pydantic import Field, field_validator

from rlmt.algorithms.settings import Strict
from rlmt.rewards.base import AnswerItem, AnswerReward, Scored
from rlmt.rewards.registry import BuildContext, RewardKind
from rlmt.thinking import ThinkingFormat


class MixSpec(Strict):
    """A weighted sum of other rewards, each z-normalised over the scored batch (see :mod:`rlmt.rewards.mix`)."""

    batch_relative: ClassVar[bool] = True  # its score depends on the rest of the batch (mean 0 per batch)

    kind: Literal["mix"] = Field(description="Reward kind.")
    parts: dict[str, float] = Field(min_length=1, description="Other reward_models entries (any kind, a mix "
                                    "included) and their weights; each part's scores are z-normalised over the "
                                    "scored batch before weighting.")
    normalise: Literal["batch_z"] = Field(default="batch_z", description="batch_z: (x - mean) / std over the "
                                          "scored batch, std the population std; a part with std 0 contributes 0.")

    @field_validator("parts")
    @classmethod
    def _finite_weights(cls, parts: dict[str, float]) -> dict[str, float]:
        bad = {name: w for name, w in parts.items() if not math.isfinite(w)}
        if bad:
            raise ValueError(f"every weight must be a finite number, got {bad}")
        return parts

    def references(self) -> dict[str, list[str]]:
        """The other config entries this one names, by top-level section."""
        return {"reward_models": list(self.parts)}

    def describe(self, name: str, results_root: str | Path = "results") -> str:
        """One line for the report: the weighted parts."""
        terms = " + ".join(f"{weight:g}·z({part})" for part, weight in self.parts.items())
        return f"mix: {terms}, each part z-normalised over the scored batch"


def batch_z(scores: Sequence[float]) -> list[float]:
    """``(x - mean) / std`` over `scores` (population std); all zeros when every score is equal."""
    n = len(scores)
    if n == 0 or min(scores) == max(scores):
        return [0.0] * n
    mean = math.fsum(scores) / n
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in scores) / n)
    return [(x - mean) / std for x in scores]


class MixReward(AnswerReward):
    """``sum_p weight_p * batch_z(part_p's scores)`` over the items of one call (see the module docstring).

    Counts are the parts' counts as ``<part>/<count>``. Deterministic when its parts are: the same
    items give the same floats, and equal items equal floats.
    """

    kind = "mix"

    def __init__(self, fmt: ThinkingFormat, parts: Mapping[str, AnswerReward], weights: Mapping[str, float], *,
                 strict: bool = False) -> None:
        super().__init__(fmt, strict=strict)
        if set(parts) != set(weights):
            raise ValueError(f"mix parts {sorted(parts)} and weights {sorted(weights)} must name the same rewards")
        self.parts = dict(parts)
        self.weights = {name: float(weights[name]) for name in parts}

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        total = [0.0] * len(items)
        counts: dict[str, int] = {}
        for name, part in self.parts.items():
            scored = part.score_answers(items, progress=progress)
            if len(scored.scores) != len(items):
                raise RuntimeError(f"mix part {name!r} returned {len(scored.scores)} scores for {len(items)} answers")
            weight = self.weights[name]
            total = [t + weight * z for t, z in zip(total, batch_z([float(s) for s in scored.scores]))]
            counts.update({f"{name}/{key}": value for key, value in scored.counts.items()})
        return Scored(scores=total, counts=counts)

    def close(self) -> None:
        for part in self.parts.values():
            part.close()


# ---------------------------------------------------------------------- the registry entry


def _parts_in_order(name: str, specs: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    """Every non-mix reward `name` depends on (itself when it is not a mix), checking parts exist and no cycle."""
    if name in path:
        raise ValueError(f"reward_models.{path[0]}: refers back to itself ({' -> '.join([*path, name])})")
    if name not in specs:
        where = f"reward_models.{path[-1]}.parts" if path else "reward"
        raise ValueError(f"{where}: {name!r} is not a reward_models entry; allowed: {sorted(specs)}")
    spec = specs[name]
    if getattr(spec, "kind", None) != "mix":
        return [name]
    leaves: list[str] = []
    for part in spec.parts:
        leaves += [leaf for leaf in _parts_in_order(part, specs, (*path, name)) if leaf not in leaves]
    return leaves


def _inputs(name: str, spec: MixSpec, specs: Mapping[str, Any]) -> dict[str, str]:
    """Its parts' inputs (each part's keys start with the part's name, so they never collide)."""
    from rlmt.rewards import reward_inputs  # the package's resolver: it catches a composite part that loops back

    found: dict[str, str] = {}
    for leaf in _parts_in_order(name, {**specs, name: spec}):
        found.update(reward_inputs(leaf, specs))
    return found


def _build(name: str, spec: MixSpec, context: BuildContext) -> MixReward:
    _parts_in_order(name, {**context.specs, name: spec})  # missing parts and cycles: a clear error, nothing built
    if context.build_named is None:
        raise ValueError(f"reward {name!r} (kind mix) is built by rlmt.rewards.build_reward, which builds its parts")
    parts = {part: context.build_named(part) for part in spec.parts}
    return MixReward(context.fmt, parts, spec.parts, strict=context.strict)


KIND = RewardKind(name="mix", spec=MixSpec, build=_build, inputs=_inputs,
                  doc="A weighted sum of named rewards, each z-normalised over the scored batch.")
