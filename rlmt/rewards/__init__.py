"""Rewards: the interface (:mod:`rlmt.rewards.base`), the kinds by name (:mod:`rlmt.rewards.registry`).

``reward_models.<name>.kind`` selects a kind (default ``classifier``); every consumer (GRPO, PPO, DPO's
pair builder, the ``reward-winrate`` benchmark) receives the :class:`AnswerReward` that
:func:`build_reward` makes from the entry, or a :class:`NamedReward` that it builds where it runs (on
the process's device, after what must come first). A new kind is one module with a config entry
class, a builder and its inputs, registered in :data:`BUILTIN_KINDS` below: no trainer changes.

Imports nothing heavy: ``rlmt.config`` reads the specs from here (:func:`spec_type`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Mapping, Union

from rlmt.rewards import classifier, length, mix, rubric
from rlmt.rewards.base import AnswerItem, AnswerReward, RewardBatch, Scored
from rlmt.rewards.classifier import AnswerRewardScorer, RewardModelSpec, length_buckets
from rlmt.rewards.registry import BuildContext, RewardKind, get, register, registered
from rlmt.rewards.rule import RuleReward
from rlmt.thinking import ThinkingFormat

__all__ = ["AnswerItem", "AnswerReward", "AnswerRewardScorer", "BuildContext", "NamedReward", "RewardBatch",
           "RewardKind", "RewardModelSpec", "RuleReward", "Scored", "build_reward", "kind_of", "length_buckets",
           "reward_inputs", "spec_type"]

# The built-in kind modules, in registration order (the config's union and `rlmt config schema` follow it).
# Each module defines KIND (one RewardKind) or KINDS (several).
BUILTIN_KINDS = (
    classifier,  # a Bradley-Terry reward model scores the answer (the paper's reward)
    mix,  # a weighted sum of named rewards, each z-normalised over the scored batch
    rubric,  # an LLM judge grades the answer against its prompt's rubric or checklist
    length,  # length_penalty (DAPO's soft overlong punishment) and length_debiased (ODIN-style) over a named reward
)
for _module in BUILTIN_KINDS:
    for _kind in getattr(_module, "KINDS", None) or (_module.KIND,):
        register(_kind)

DEFAULT_KIND = "classifier"  # an entry without `kind` (every config written before kinds existed)


def kind_of(spec: Any) -> str:
    """The kind of a ``reward_models`` entry (a parsed spec or its raw mapping)."""
    if isinstance(spec, Mapping):
        return str(spec.get("kind", DEFAULT_KIND))
    return getattr(spec, "kind", DEFAULT_KIND)


def spec_type() -> Any:
    """The type of one ``reward_models`` entry: the registered kinds' specs, chosen by ``kind`` (default classifier)."""
    from pydantic import Discriminator, Tag

    kinds = registered()
    members = tuple(Annotated[k.spec, Tag(k.name)] for k in kinds)
    return Annotated[Union[members], Discriminator(
        kind_of, custom_error_type="unknown_reward_kind",
        custom_error_message=f"unknown reward kind; registered kinds: {[k.name for k in kinds]}")]


_resolving: list[str] = []  # the chain reward_inputs is resolving (a composite kind asks again for its parts)


def reward_inputs(name: str, specs: Mapping[str, Any]) -> dict[str, str]:
    """The files a job needs for reward `name`: ``{key: path relative to the results dir}`` (a mix: its parts').

    A composite kind resolves its parts through this function, so a chain of entries that comes back
    to one on it is an error, whatever kinds it passes through. Raises ValueError when `name` (or a
    part of it) is not an entry, or refers back to itself.
    """
    if name not in specs:
        raise ValueError(f"reward {name!r} is not a reward_models entry; allowed: {sorted(specs)}")
    if name in _resolving:
        chain = [*_resolving[_resolving.index(name):], name]
        raise ValueError(f"reward_models.{chain[0]}: refers back to itself ({' -> '.join(chain)})")
    spec = specs[name]
    _resolving.append(name)
    try:
        return dict(get(kind_of(spec)).inputs(name, spec, specs))
    finally:
        _resolving.pop()


def reward_api_key_envs(name: str, specs: Mapping[str, Any]) -> list[str]:
    """The environment variables holding API keys that reward `name` (and every entry it names) calls with."""
    names: set[str] = set()
    seen: set[str] = set()
    todo = [name]
    while todo:
        entry = todo.pop()
        if entry in seen or entry not in specs:
            continue
        seen.add(entry)
        spec = specs[entry]
        names.update(getattr(spec, "api_key_envs", lambda: [])())
        todo.extend(getattr(spec, "references", lambda: {})().get("reward_models", []))
    return sorted(names)


def build_reward(name: str, specs: Mapping[str, Any], context: BuildContext) -> AnswerReward:
    """The reward of ``reward_models.<name>`` (`specs`: every entry), built with `context`'s format, device, inputs.

    Every reward this call builds (a mix's parts, a part two mixes share) is built once.
    """
    if name not in specs:
        raise ValueError(f"reward {name!r} is not a reward_models entry; allowed: {sorted(specs)}")
    built: dict[str, AnswerReward] = {}
    path: list[str] = []

    def build_named(part: str) -> AnswerReward:
        if part not in built:
            if part in path:
                raise ValueError(f"reward_models.{path[0]}: refers back to itself ({' -> '.join([*path, part])})")
            if part not in specs:
                raise ValueError(f"reward {part!r} is not a reward_models entry; allowed: {sorted(specs)}")
            path.append(part)
            spec = specs[part]
            built[part] = get(kind_of(spec)).build(part, spec, ctx)
            path.pop()
        return built[part]

    ctx = replace(context, specs=specs, build_named=build_named)
    return build_named(name)


@dataclass(frozen=True)
class NamedReward:
    """A ``reward_models`` entry by name with the files it needs: what a job is given, built where it runs.

    Trainers build it on their process's device with the policy's thinking format (GRPO and PPO after
    the process group exists, DPO after its sampling freed the GPU). `inputs`: ``{key: path}`` as
    :func:`reward_inputs` names the keys.
    """

    name: str
    specs: Mapping[str, Any]
    inputs: Mapping[str, Path] = field(default_factory=dict)
    cache_dir: Path | None = None

    @classmethod
    def classifier_dir(cls, model_dir: str | Path, spec: RewardModelSpec | None = None,
                       name: str = "reward") -> "NamedReward":
        """A classifier reward model directory (`spec`: its config entry's settings; default: the defaults)."""
        spec = spec or RewardModelSpec(source=str(model_dir))
        return cls(name, {name: spec}, {name: Path(model_dir)})

    def missing_inputs(self) -> list[str]:
        """Keys the reward needs that `inputs` lacks."""
        return sorted(set(reward_inputs(self.name, self.specs)) - set(self.inputs))

    def build(self, fmt: ThinkingFormat, *, strict: bool = False, device: str = "auto") -> AnswerReward:
        missing = self.missing_inputs()
        if missing:
            raise ValueError(f"reward {self.name!r} needs input(s) {missing} (got {sorted(self.inputs)})")
        context = BuildContext(fmt=fmt, strict=strict, device=device,
                               inputs={k: Path(v) for k, v in self.inputs.items()}, cache_dir=self.cache_dir)
        return build_reward(self.name, self.specs, context)
