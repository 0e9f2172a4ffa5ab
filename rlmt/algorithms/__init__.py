"""The training algorithms, by name: one module each, and this registry that everything else reads.

Each module (``sft``, ``grpo``, ``ppo``, ``dpo``) owns its settings class and an :class:`Algorithm`
describing it: its step count and schedule, the batch geometry it needs over N processes, the sharding
its trainer runs under, and the models a training job holds. ``rlmt.config`` builds the
``algorithms``/``overrides`` blocks and the grid's ``algo`` axis from this registry; the preflight, the
CLI, the report and the trainers ask it instead of branching on a name. Adding an algorithm: its own
module, and one line in ``_BUILTIN`` (or :func:`register` before ``rlmt.config`` is imported).

Imports nothing heavy (``snakemake -n`` imports the config) and never ``rlmt.config``.
"""

from __future__ import annotations

from rlmt.algorithms import dpo, grpo, ppo, sft
from rlmt.algorithms.base import Algorithm, GeometryProblem
from rlmt.algorithms.schedule import Schedule
from rlmt.named_registry import NamedRegistry

__all__ = ["Algorithm", "GeometryProblem", "Schedule", "cell_algorithms", "get", "register", "registered"]

_ALGORITHMS: NamedRegistry[Algorithm] = NamedRegistry("algorithm")


def register(algorithm: Algorithm) -> Algorithm:
    """Add `algorithm` under its name (registration order is the config's field order)."""
    return _ALGORITHMS.register(algorithm)


def get(name: str) -> Algorithm:
    """The algorithm registered as `name`."""
    return _ALGORITHMS.get(name)


def registered() -> tuple[Algorithm, ...]:
    """Every algorithm, in registration order."""
    return _ALGORITHMS.all()


def cell_algorithms() -> tuple[str, ...]:
    """The names a grid cell's ``algo`` may take (every algorithm but the warm-start SFT stage)."""
    return tuple(a.name for a in _ALGORITHMS.all() if a.trains_cell)


_BUILTIN = (sft, grpo, ppo, dpo)
for _module in _BUILTIN:
    register(_module.ALGORITHM)
