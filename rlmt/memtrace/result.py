"""What a trace measured: bytes per category at each phase's peak, FLOPs, and the models' sizes.

Categories (MemTracker's, renamed): ``params`` (module parameters), ``buffers`` (module buffers, e.g.
rotary tables), ``grads`` (parameter gradients), ``optimizer`` (AdamW's persistent state: moments and
step counters), ``activations`` (what the forward pass allocates, kept for backward or not),
``temporaries`` (what the backward pass and the optimizer step allocate besides the above), ``other``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlmt.memtrace.spec import JobSpec

CATEGORIES = ("params", "buffers", "grads", "optimizer", "activations", "temporaries", "other")
GIB = 2 ** 30


@dataclass(frozen=True)
class PhaseMemory:
    """One phase of the step (see :mod:`rlmt.memtrace.jobs`): the bytes per category at its peak."""

    name: str
    bytes: dict[str, int]
    flops: int
    computing: tuple[str, ...] = ()  # roles of the models that run in this phase (policy, critic, ...)

    @property
    def total(self) -> int:
        return sum(self.bytes.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "bytes": dict(self.bytes), "flops": self.flops, "computing": list(self.computing)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhaseMemory":
        return cls(d["name"], {k: int(v) for k, v in d["bytes"].items()}, int(d["flops"]), tuple(d["computing"]))


@dataclass(frozen=True)
class ModelMemory:
    """One model of the job as built for the trace (``role``: policy, critic, reference, reward)."""

    role: str
    trainable: bool
    params: int  # parameter count
    param_bytes: int  # in the traced dtype
    layers: int
    layer_bytes: int  # one decoder layer's parameters, traced dtype
    optimizer_bytes: int = 0  # AdamW state as traced (trainable models)

    @property
    def bytes_per_param(self) -> float:
        return self.param_bytes / self.params if self.params else 0.0

    @property
    def non_layer_bytes(self) -> int:
        """Embeddings, final norm and head: what is not a decoder layer."""
        return self.param_bytes - self.layers * self.layer_bytes

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMemory":
        return cls(**d)


@dataclass(frozen=True)
class TraceResult:
    """A job's step per device, unsharded: phases in the order they run, each at its own peak."""

    spec: JobSpec
    phases: tuple[PhaseMemory, ...]
    models: tuple[ModelMemory, ...]
    traced_depths: tuple[dict[str, int], ...] = ()  # depths actually traced (one: not extrapolated)
    config_origins: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def peak_phase(self) -> PhaseMemory:
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak_bytes(self) -> int:
        return self.peak_phase.total

    @property
    def flops(self) -> int:
        """FLOPs of the traced step (matrix products and attention, every phase, recomputation included)."""
        return sum(p.flops for p in self.phases)

    def phase(self, name: str) -> PhaseMemory:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"no phase {name!r}; phases: {[p.name for p in self.phases]}")

    def model(self, role: str) -> ModelMemory:
        for m in self.models:
            if m.role == role:
                return m
        raise KeyError(f"no model {role!r}; models: {[m.role for m in self.models]}")

    def summary(self) -> str:
        """One line per phase, GiB per category."""
        lines = []
        for p in self.phases:
            parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in p.bytes.items() if v)
            lines.append(f"{p.name}: {p.total / GIB:.2f} GiB ({parts}); {p.flops / 1e12:.1f} TFLOP")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "phases": [p.to_dict() for p in self.phases],
                "models": [m.to_dict() for m in self.models], "traced_depths": [dict(d) for d in self.traced_depths],
                "config_origins": dict(self.config_origins), "seconds": self.seconds, "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TraceResult":
        return cls(spec=JobSpec.from_dict(d["spec"]), phases=tuple(PhaseMemory.from_dict(p) for p in d["phases"]),
                   models=tuple(ModelMemory.from_dict(m) for m in d["models"]),
                   traced_depths=tuple(d.get("traced_depths", ())), config_origins=d.get("config_origins", {}),
                   seconds=float(d.get("seconds", 0.0)), versions=d.get("versions", {}))
