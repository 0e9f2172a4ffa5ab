"""Reward kinds by name: ``reward_models.<name>.kind`` selects one.

A kind is one module in ``rlmt/rewards/`` that defines its config entry (a pydantic class with a
``kind: Literal["<name>"]`` field and, optionally, a ``describe(name, results_root)`` method: one
line for the report's Rewards section), a builder, and the inputs a training job needs for it, and
registers a :class:`RewardKind`. No trainer changes for a new kind: every trainer, the DPO pair
builder and the ``reward-winrate`` benchmark receive an :class:`rlmt.rewards.base.AnswerReward`.

Imports nothing heavy (``rlmt.config`` reads the specs; ``snakemake -n`` imports the config).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from rlmt.named_registry import NamedRegistry

if TYPE_CHECKING:
    from rlmt.rewards.base import AnswerReward
    from rlmt.thinking import ThinkingFormat


@dataclass(frozen=True)
class BuildContext:
    """What a builder may use besides its own config entry.

    ``inputs``: the files the job received for this reward, by the keys its kind's ``inputs`` named
    (e.g. a classifier's model dir, a rubric file). ``specs``: every ``reward_models`` entry by name
    (a ``mix`` finds its parts there); ``build_named`` builds one of them in this same context.
    ``cache_dir``: where a reward that calls a service keeps its answers (a resumed step re-asks nothing).
    """

    fmt: "ThinkingFormat"
    strict: bool = False
    device: str = "auto"
    inputs: Mapping[str, Path] = field(default_factory=dict)
    specs: Mapping[str, Any] = field(default_factory=dict)
    cache_dir: Path | None = None
    build_named: Callable[[str], "AnswerReward"] | None = None


@dataclass(frozen=True)
class RewardKind:
    """One reward kind.

    ``spec``: the config entry's class. ``build(name, spec, context)`` -> the reward.
    ``inputs(name, spec, specs)`` -> the files a training job needs for it, as ``{key: path relative to
    the results dir}`` (a classifier: its model dir; a generated rubric: the rubric file); a composite
    kind returns its parts' inputs too.
    """

    name: str
    spec: type
    build: Callable[[str, Any, BuildContext], "AnswerReward"]
    inputs: Callable[[str, Any, Mapping[str, Any]], dict[str, str]]
    doc: str = ""


_KINDS: NamedRegistry[RewardKind] = NamedRegistry("reward kind")


def register(kind: RewardKind) -> RewardKind:
    """Add `kind` under its name."""
    return _KINDS.register(kind)


def get(name: str) -> RewardKind:
    """The reward kind registered as `name`."""
    return _KINDS.get(name)


def registered() -> tuple[RewardKind, ...]:
    """Every kind, in registration order."""
    return _KINDS.all()
