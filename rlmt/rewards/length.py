"""Length-debiased rewards: two kinds that wrap another named reward (``base``).

A reward model that prefers longer answers teaches the policy to write longer, not better. Two
corrections, each a ``reward_models`` entry whose ``base`` names the reward it corrects:

``length_penalty``
    base reward + ``coefficient`` x DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), computed
    by TRL's own :func:`trl.rewards.get_soft_overlong_punishment` on the answer's token ids:
    0 up to ``L_max - L_cache`` tokens, then falling linearly to -1 at ``L_max``, and -1 past it
    (``L_max`` = ``max_answer_tokens``, ``L_cache`` = ``soft_punish_cache``). It punishes answers that
    run long; it never rewards short ones.

``length_debiased``
    ODIN-style (Chen et al. 2024, "ODIN: Disentangled Reward Mitigates Hacking in RLHF"), post hoc:
    ``score - slope * (length - mean_length)``, where ``slope`` and ``mean_length`` are the least-squares
    fit of the base reward on answer length over a calibration set (``results/rewards/<name>/
    calibration.json``, rule ``reward_calibration``: the start policy's own answers to prompts of a
    mixture's train or tune split, refused if they share a prompt with any evaluation set). On the
    calibration set the corrected reward has no linear dependence on length (Pearson r = 0); the
    mean reward is unchanged there.

**Which length.** The answer's tokens, not the whole completion's: a reward kind sees only the
extracted answer (:mod:`rlmt.rewards.base`), the bias being corrected is the reward model's taste for
long *answers* (it never sees the thought), and a penalty on the thought would punish thinking itself,
the behaviour RLMT trains. The completion's own budget is enforced elsewhere: rollouts stop at
``max_completion_length``, and ``strict`` scores an unfinished thought as ``[NULL]``.

**Whose tokens.** The tokenizer of the ``tokenizer_model`` entry (the policy's base model): the job
receives its prepared dir as the input ``<name>:tokenizer``, so no trainer passes lengths. One
tokenizer per reward entry keeps the units of ``max_answer_tokens`` and of a fitted slope fixed: a
slope fitted in one tokenizer's tokens must not be applied to another's. Text is tokenized without
special tokens (``add_special_tokens=False``): the answer's own tokens.

Imports nothing heavy at module level (``rlmt.config`` reads the specs): the tokenizer and TRL load
in the builders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from rlmt.algorithms.settings import Strict
from rlmt.rewards.base import AnswerItem, AnswerReward, Scored
from rlmt.rewards.registry import BuildContext, RewardKind, get as get_kind
from rlmt.thinking import ThinkingFormat

CALIBRATION_FILE = "calibration.json"


# ---------------------------------------------------------------------- config entries


class LengthPenaltySpec(Strict):
    """``kind: length_penalty``: the base reward plus DAPO's soft overlong punishment on the answer's tokens."""

    kind: Literal["length_penalty"] = Field(description="Reward kind.")
    base: str = Field(description="The `reward_models` entry whose score is penalised.")
    tokenizer_model: str = Field(description="Model (a `models` entry, the policy's base) whose tokenizer counts "
                                 "the answer's tokens.")
    max_answer_tokens: int = Field(ge=1, description="L_max: an answer longer than this gets the full penalty.")
    soft_punish_cache: int = Field(ge=0, description="L_cache: the penalty ramps from 0 at L_max - L_cache tokens "
                                   "to -1 at L_max (0: a step at L_max).")
    coefficient: float = Field(default=1.0, gt=0, description="Weight of the penalty (in [-1, 0]) added to the base "
                               "score: a reward model's scores are not DAPO's +-1, so state its scale.")

    def references(self) -> dict[str, list[str]]:
        """The other config entries this one names, by top-level section (for the config's reference check)."""
        return {"reward_models": [self.base], "models": [self.tokenizer_model]}

    def describe(self, name: str, results_root: str | Path = "results") -> str:
        """One line for the report: the penalty's shape."""
        return (f"{self.base} + {self.coefficient:g} x DAPO soft overlong punishment on answer tokens "
                f"(0 up to {self.max_answer_tokens - self.soft_punish_cache}, -1 from {self.max_answer_tokens}; "
                f"{self.tokenizer_model}'s tokenizer)")

    @model_validator(mode="after")
    def _cache_within_budget(self) -> "LengthPenaltySpec":
        if self.soft_punish_cache > self.max_answer_tokens:
            raise ValueError(f"soft_punish_cache ({self.soft_punish_cache}) must not exceed max_answer_tokens "
                             f"({self.max_answer_tokens})")
        return self


class CalibrationSpec(Strict):
    """Where the ``length_debiased`` fit comes from: a policy's own answers to prompts no evaluation uses."""

    mixture: str = Field(description="A `mixtures` entry whose split holds the calibration prompts.")
    split: Literal["train", "tune"] = Field(
        default="train", description="Never 'val' (the win rate's evaluation prompts); the job also refuses a "
        "calibration prompt shared (by id or by text) with any benchmark's items or any mixture's val split.")
    policy: str = Field(description="The model whose answers are fitted on: a `models` entry or a policy dir name "
                        "under results/models (e.g. '<base>__sft__nothink__<sft_data>', a cell's start policy).")
    n_prompts: int | None = Field(default=64, ge=2, description="The first N prompts of the split (None: all).")
    max_new_tokens: int = Field(default=256, ge=1, description="The policy's token budget per answer (as in rollouts).")
    temperature: float = Field(default=0.7, ge=0, description="Sampling temperature (the rollouts' own, so the fit "
                               "sees the lengths training will see).")
    seed: int = 0


class LengthDebiasedSpec(Strict):
    """``kind: length_debiased``: ODIN-style, the base reward minus its least-squares linear trend in answer length."""

    kind: Literal["length_debiased"] = Field(description="Reward kind.")
    base: str = Field(description="The `reward_models` entry whose length trend is removed.")
    tokenizer_model: str = Field(description="Model (a `models` entry, the policy's base) whose tokenizer counts "
                                 "the answer's tokens, in the fit and in use.")
    calibration: CalibrationSpec

    def references(self) -> dict[str, list[str]]:
        """The other config entries this one names, by top-level section (the calibration policy may also be a
        start policy's dir name, which the plan checks)."""
        return {"reward_models": [self.base], "models": [self.tokenizer_model],
                "mixtures": [self.calibration.mixture]}

    def describe(self, name: str, results_root: str | Path = "results") -> str:
        """One line for the report: the correction and, once fitted, its line and the correlation it removed."""
        c = self.calibration
        text = (f"{self.base} - slope x (answer tokens - mean), ODIN-style; fitted on {c.policy}'s answers to "
                f"{c.n_prompts or 'all'} {c.mixture}/{c.split} prompts")
        path = Path(results_root) / calibration_file(name)
        if not path.exists():
            return text + " (not fitted yet)"
        try:
            fit = read_calibration(path, reward=name, base=self.base, tokenizer_model=self.tokenizer_model)
        except ValueError as err:
            return text + f" (its calibration file is not usable: {err})"
        r_before, r_after = fit.get("pearson_before"), fit.get("pearson_after")
        corr = (f"reward-length Pearson r {r_before:+.2f} -> {r_after:+.2f}" if r_before is not None
                and r_after is not None else "reward-length r undefined (constant scores)")
        dropped = fit.get("n_malformed_excluded") or 0
        return text + (f": slope {fit['slope']:+.4g} per token, mean {fit['mean_length']:.1f} tokens, "
                       f"{corr} on {fit['n']} answers" + (f" ({dropped} malformed left out)" if dropped else ""))


# ---------------------------------------------------------------------- answer length


class AnswerTokens:
    """The answer's own token ids in one tokenizer (no special tokens): the length both kinds use."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, model_dir: str | Path) -> "AnswerTokens":
        from rlmt.models.loading import load_tokenizer

        return cls(load_tokenizer(model_dir))

    def ids(self, answers: Sequence[str]) -> list[list[int]]:
        if not answers:
            return []
        return [list(ids) for ids in self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]]

    def lengths(self, answers: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.ids(answers)]


# ---------------------------------------------------------------------- the rewards


class LengthPenaltyReward(AnswerReward):
    """``base + coefficient * soft_overlong_punishment(answer token ids)``.

    Counts: the base's, plus ``length_penalized`` (answers with a penalty < 0) and
    ``answer_over_max_tokens`` (answers past L_max: the full penalty).
    """

    kind = "length_penalty"

    def __init__(self, fmt: ThinkingFormat, base: AnswerReward, tokens: AnswerTokens, *, max_answer_tokens: int,
                 soft_punish_cache: int, coefficient: float = 1.0, strict: bool = False) -> None:
        from trl.rewards import get_soft_overlong_punishment

        super().__init__(fmt, strict=strict)
        self.base = base
        self.parts = {"base": base}  # the rewards this one is made of (a trainer finds the base's model through it)
        self.tokens = tokens
        self.max_answer_tokens = max_answer_tokens
        self.coefficient = coefficient
        # TRL's function reads only len() of each id list: fed the answer's ids, it is DAPO's eq. 13 on the answer
        self.punishment = get_soft_overlong_punishment(max_completion_len=max_answer_tokens,
                                                       soft_punish_cache=soft_punish_cache)

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        scored = self.base.score_answers(items, progress=progress)
        ids = self.tokens.ids([item.answer for item in items])
        penalties = self.punishment(completion_ids=ids)
        counts = dict(scored.counts)
        counts["length_penalized"] = counts.get("length_penalized", 0) + sum(p < 0 for p in penalties)
        counts["answer_over_max_tokens"] = (counts.get("answer_over_max_tokens", 0)
                                            + sum(len(x) > self.max_answer_tokens for x in ids))
        return Scored(scores=[float(s) + self.coefficient * p for s, p in zip(scored.scores, penalties)],
                      counts=counts, reward_inputs=list(scored.reward_inputs), input_lengths=list(scored.input_lengths))

    def close(self) -> None:
        self.base.close()


class LengthDebiasedReward(AnswerReward):
    """``base - slope * (answer tokens - mean_length)``, with ``slope``/``mean_length`` from a calibration fit."""

    kind = "length_debiased"

    def __init__(self, fmt: ThinkingFormat, base: AnswerReward, tokens: AnswerTokens, *, slope: float,
                 mean_length: float, strict: bool = False) -> None:
        super().__init__(fmt, strict=strict)
        self.base = base
        self.parts = {"base": base}
        self.tokens = tokens
        self.slope = float(slope)
        self.mean_length = float(mean_length)

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        scored = self.base.score_answers(items, progress=progress)
        lengths = self.tokens.lengths([item.answer for item in items])
        scores = [debias(float(s), n, self.slope, self.mean_length) for s, n in zip(scored.scores, lengths)]
        return Scored(scores=scores,
                      counts=dict(scored.counts), reward_inputs=list(scored.reward_inputs),
                      input_lengths=list(scored.input_lengths))

    def close(self) -> None:
        self.base.close()


def debias(score: float, length: float, slope: float, mean_length: float) -> float:
    """ODIN's correction: the score less the fitted line's rise from the mean length."""
    return score - slope * (length - mean_length)


def read_calibration(path: str | Path, *, reward: str | None = None, base: str | None = None,
                     tokenizer_model: str | None = None) -> dict:
    """A calibration.json, checked: every key present and finite, and fitted for this reward's base and tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no calibration file (rule reward_calibration, "
                                "`rlmt train reward-calibration`, writes it)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in ("slope", "mean_length", "n") if not isinstance(data.get(k), (int, float))
               or isinstance(data.get(k), bool) or data[k] != data[k]]
    if missing:
        raise ValueError(f"{path}: {missing} must be numbers")
    for key, want in (("reward", reward), ("base", base), ("tokenizer_model", tokenizer_model)):
        if want is not None and data.get(key) != want:
            raise ValueError(f"{path} was fitted for {key} {data.get(key)!r}, not {want!r}: rerun the calibration")
    return data


# ---------------------------------------------------------------------- registry entries


def tokenizer_key(name: str) -> str:
    """The job input that holds the tokenizer_model's dir (':' is in no reward name, so no key collides)."""
    return f"{name}:tokenizer"


def calibration_key(name: str) -> str:
    return f"{name}:calibration"


def calibration_file(name: str) -> str:
    """calibration.json of a ``length_debiased`` entry, relative to the results dir."""
    return f"rewards/{name}/{CALIBRATION_FILE}"


def _check_no_loop(name: str, spec: Any, specs: Mapping[str, Any]) -> None:
    """A chain of wrapped rewards (``base``) and mixes (``parts``) that comes back to `name` is an error."""
    stack: list[tuple[str, tuple[str, ...]]] = [(spec.base, (name, spec.base))]
    while stack:
        current, path = stack.pop()
        if current == name:
            raise ValueError(f"reward_models.{name}: refers back to itself ({' -> '.join(path)})")
        inner = specs.get(current)
        children = [inner.base] if hasattr(inner, "base") else list(getattr(inner, "parts", None) or [])
        stack.extend((child, (*path, child)) for child in children if child not in path[1:])


def _base_inputs(name: str, spec: Any, specs: Mapping[str, Any]) -> dict[str, str]:
    if spec.base not in specs and spec.base != name:
        raise ValueError(f"reward_models.{name}.base: {spec.base!r} is not defined; allowed: "
                         f"{sorted(n for n in specs if n != name)}")
    _check_no_loop(name, spec, specs)
    base_spec = specs[spec.base]
    return dict(get_kind(getattr(base_spec, "kind", "classifier")).inputs(spec.base, base_spec, specs))


def _input(context: BuildContext, name: str, key: str) -> Path:
    if key not in context.inputs:
        raise ValueError(f"reward {name!r} needs the input {key!r} (got inputs {sorted(context.inputs)}); "
                         f"on the command line: --reward-input {key}=PATH")
    return Path(context.inputs[key])


def _base(context: BuildContext, name: str, spec: Any) -> AnswerReward:
    if context.build_named is None:
        raise ValueError(f"reward {name!r} wraps {spec.base!r}: its build context must be able to build named rewards")
    return context.build_named(spec.base)


def _penalty_inputs(name: str, spec: LengthPenaltySpec, specs: Mapping[str, Any]) -> dict[str, str]:
    return {**_base_inputs(name, spec, specs), tokenizer_key(name): f"models/{spec.tokenizer_model}"}


def _build_penalty(name: str, spec: LengthPenaltySpec, context: BuildContext) -> LengthPenaltyReward:
    tokens = AnswerTokens.load(_input(context, name, tokenizer_key(name)))
    return LengthPenaltyReward(context.fmt, _base(context, name, spec), tokens, strict=context.strict,
                               max_answer_tokens=spec.max_answer_tokens, soft_punish_cache=spec.soft_punish_cache,
                               coefficient=spec.coefficient)


def _debiased_inputs(name: str, spec: LengthDebiasedSpec, specs: Mapping[str, Any]) -> dict[str, str]:
    return {**_base_inputs(name, spec, specs), tokenizer_key(name): f"models/{spec.tokenizer_model}",
            calibration_key(name): calibration_file(name)}


def _build_debiased(name: str, spec: LengthDebiasedSpec, context: BuildContext) -> LengthDebiasedReward:
    fit = read_calibration(_input(context, name, calibration_key(name)), reward=name, base=spec.base,
                           tokenizer_model=spec.tokenizer_model)
    tokens = AnswerTokens.load(_input(context, name, tokenizer_key(name)))
    return LengthDebiasedReward(context.fmt, _base(context, name, spec), tokens, strict=context.strict,
                                slope=fit["slope"], mean_length=fit["mean_length"])


LENGTH_PENALTY = RewardKind(
    name="length_penalty", spec=LengthPenaltySpec, build=_build_penalty, inputs=_penalty_inputs,
    doc="The base reward plus DAPO's soft overlong punishment (TRL's) on the answer's tokens.")
LENGTH_DEBIASED = RewardKind(
    name="length_debiased", spec=LengthDebiasedSpec, build=_build_debiased, inputs=_debiased_inputs,
    doc="ODIN-style: the base reward minus its least-squares trend in answer length, fitted on a calibration set.")
KINDS = (LENGTH_PENALTY, LENGTH_DEBIASED)

