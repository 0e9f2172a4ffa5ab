"""Trace one training job's optimizer step on fake tensors: bytes per category per phase, and FLOPs.

How: the job's models are built from their configs inside ``torch._subclasses.fake_tensor.FakeTensorMode``
(tensors with shapes, dtypes and storages but no data) and :func:`rlmt.memtrace.jobs.run_step` runs the
step through the real modelling code. Each phase runs under ``torch.distributed._tools.mem_tracker.MemTracker``
(which sees every allocation and free, and sorts storages into parameters, buffers, gradients, optimizer
state, activations and temporaries) and counts FLOPs with ``torch.utils.flop_counter``'s formulas
(:mod:`rlmt.memtrace.flops`; not through ``FlopCounterMode`` itself, whose module hooks keep tensors
alive). Every model and the optimizer state are resident in every phase, as on the GPU.

Mixed precision: the trace holds the models in the spec's ``weights_dtype`` and runs AdamW on them, so
the optimizer state it reports is AdamW's moments (and step counters) in that dtype, *traced*. The fp32
master weights and fp32 moments of DeepSpeed ZeRO and FSDP are not traced: :mod:`rlmt.memtrace.sharding`
computes them as named terms from the traced parameter counts.

Depth: the memory of every category at a phase's peak is affine in the number of (identical) decoder
layers when the peak falls at the same point of the step at every depth, and the FLOPs are affine too.
Phases are cut so that it does: a training pass is a forward phase and a backward phase, and the
backward cuts itself in three (:class:`Phase`), because candidate peaks that grow at different rates
with depth (the end of the forward with all its saved activations, the head's backward, the last
layer's backward with all the gradients) would otherwise trade places between a shallow and a deep
model. Extrapolated apart, the largest of them is found at any depth.

Unless the spec fixes ``layers``, each model group (the policy with its critic and reference; the
reward model) is traced at 2 layers and at 3, the other group held at 2, and every number is
extrapolated linearly to the models' own depths: ``v(L) = v(2) + sum_g (v(g at 3) - v(2)) * (L_g - 2)``.
Not 1 and 2: a no-grad forward of one layer peaks elsewhere than one of several (its peak is inside a
layer, where the previous layer's output is still alive), so 1 layer is off the line. A trace of
Llama-3.1-8B at 2 or 3 layers takes about a second here; at its 32 layers, about 10 (a test checks that
the two agree).

:func:`trace_at_depth` counts the traces it runs in :func:`trace_count` (the cache's tests check that a warm
cache traces nothing). One trace at a time per process: a trace patches a few library functions while it
runs (weight initialisation, TRL's CPU kernels, transformers' packed-sequence check), never across threads.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any

import torch

from rlmt.memtrace import jobs
from rlmt.memtrace.models import JobModels, build_models, decoder_layers, storage_bytes
from rlmt.memtrace.result import CATEGORIES, ModelMemory, PhaseMemory, TraceResult
from rlmt.memtrace.spec import JobSpec
from rlmt.memtrace.version import TRACER_VERSION

BASE_DEPTH = 2

_traces = 0


def trace_count() -> int:
    """How many traces (model builds and steps) this process has run."""
    return _traces


class UnknownModelError(ValueError):
    """A model source whose configuration cannot be found offline."""


# ----------------------------------------------------------------------------- recording phases


def _memtracker_class():
    from copy import deepcopy

    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _UpdateType

    class PhaseTracker(MemTracker):
        """MemTracker for one phase: it lets a root module run more than once, tracks frozen models, labels a
        gradient allocated at the peak as a gradient, keeps the device-wide peak only (which can be restarted),
        and reports the start of each module's backward (``on_backward``).

        MemTracker refuses a second forward of a module whose only parent is the global scope, taking it
        for the next iteration; inside one phase it is a loop (e.g. log-probs computed in chunks of rows).
        Its per-module statistics are then restarted; the device-wide counts it keeps are not touched.
        """

        def _pre_fw_hook(self, module, inputs):
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                name = self._mod_tracker.get_known_fqn(module)
                if set(self._mod_tracker.parents) - {name} == {"Global"}:
                    del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)

        on_backward = None  # called with each module whose backward starts (see Phase)

        def _pre_bw_hook(self, module, args):
            if self.on_backward is not None and module is not None:
                self.on_backward(module)
            super()._pre_bw_hook(module, args)

        def _update_peak_stats(self, peak_state):
            # Only the device-wide peak is read here; MemTracker would also walk every module's statistics after
            # every op (a third of a trace's time).
            for device, snapshot in self._curr_mem_snap.items():
                if self._peak_mem.get(device, 0) < snapshot[_TOTAL_KEY]:
                    self._peak_mem[device] = snapshot[_TOTAL_KEY]
                    self._peak_mem_snap[device] = deepcopy(snapshot)

        def restart_peak(self) -> None:
            """From now on, the peak is the highest point reached after this moment."""
            self._peak_mem_snap = deepcopy(self._curr_mem_snap)
            self._peak_mem = {device: snap[_TOTAL_KEY] for device, snap in self._curr_mem_snap.items()}

        def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None):
            # A gradient is allocated as a temporary and relabelled by a hook right after; when that happens at
            # the peak (nothing freed since), the peak's breakdown takes the new label, as its total is unchanged.
            super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
            if u_type == _UpdateType.REF:
                current = self._curr_mem_snap.get(winfo.device)
                if current is not None and current[_TOTAL_KEY] == self._peak_mem.get(winfo.device):
                    self._peak_mem_snap[winfo.device] = deepcopy(current)

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            # Gradients are labelled by hooks on the parameters: on every trainable model, also those tracked as
            # external (MemTracker hooks only modules that run forward inside it); a frozen model (reference,
            # reward) has no gradients to hook, and MemTracker would fail trying.
            trainable = any(p.requires_grad for p in module.parameters())
            return super()._track_module_params_and_buffers(module, install_grad_hooks=trainable)

    return PhaseTracker


class PhaseRecorder:
    """Runs phases under MemTracker and a FLOP count and keeps one :class:`PhaseMemory` per phase.

    ``phase(name, computing)`` is a context manager; the :class:`Phase` it yields can end the current
    phase and start the next one under the same tracker (``phase.then("backward")``), so that the
    forward and the backward pass of one training pass are two phases, each with its own peak (their
    peaks grow at different rates with depth: extrapolated apart, the larger one is found at any depth).
    """

    def __init__(self, models: JobModels):
        self.models = models
        self.phases: list[PhaseMemory] = []
        self._tracker_class = _memtracker_class()

    def optimizer_state_bytes(self) -> int:
        return storage_bytes(v for state in self.models.optimizer.state.values() for v in state.values()
                             if isinstance(v, torch.Tensor))

    @contextlib.contextmanager
    def phase(self, name: str, computing: tuple[str, ...]):
        from rlmt.memtrace.flops import FlopCount

        tracker = self._tracker_class()
        resident = [m for _, m, _ in self.models.roles() if m is not self.models.policy] + [self.models.trained]
        tracker.track_external(*resident, self.models.optimizer)
        with tracker, FlopCount() as flops:
            current = Phase(self, tracker, flops, name, tuple(computing), self._backward_marks())
            tracker.on_backward = current.backward_reached
            yield current
        current.record()

    def _backward_marks(self) -> dict[int, str]:
        """Modules whose backward starts a new part of a backward pass: the trained models' decoder layers
        (``.layers``) and input embeddings (``.embeddings``), by ``id``."""
        marks: dict[int, str] = {}
        for _, module, trainable in self.models.roles():
            if not trainable:
                continue
            layers = decoder_layers(module)
            marks.update({id(layer): ".layers" for layer in (layers if layers is not None else [])})
            for sub in module.modules():
                if hasattr(sub, "get_input_embeddings") and sub.get_input_embeddings() is not None:
                    marks[id(sub.get_input_embeddings())] = ".embeddings"
        return marks

    def add(self, name: str, computing: tuple[str, ...], peak_snapshot: dict, flops: int) -> None:
        counts = _categories(peak_snapshot)
        persistent = self.optimizer_state_bytes()
        if counts["optimizer"] > persistent:  # the optimizer step's own temporaries
            counts["temporaries"] += counts["optimizer"] - persistent
            counts["optimizer"] = persistent
        self.phases.append(PhaseMemory(name, counts, flops, computing))


class Phase:
    """The phase being recorded; :meth:`then` ends it and starts the next under the same tracker.

    A backward pass (a phase named ``backward...``) splits itself where its memory changes course: at
    the first decoder layer's backward (``<name>.layers``) and at the first input embedding's
    (``<name>.embeddings``). Up to the layers, the loss and the head's backward; in the layers, the
    gradients grow while the saved activations shrink, so that part peaks at its first or its last layer
    whatever the depth; after them, the embeddings' gradients. Each part's peak is then affine in depth,
    where the whole backward's need not be (without gradient accumulation a deep model peaks at the end,
    a shallow one at the head).
    """

    def __init__(self, recorder: PhaseRecorder, tracker, flops, name: str, computing: tuple[str, ...],
                 marks: dict[int, str]):
        self._recorder, self._tracker, self._flops = recorder, tracker, flops
        self.name, self.computing = name, computing
        self._marks = marks
        self._base = None  # the backward phase's own name, once one started

    def backward_reached(self, module) -> None:
        """Called as each module's backward starts: split a backward phase at the marked modules, in order."""
        if self._base is None:
            return
        suffix = self._marks.get(id(module))
        order = ("", ".layers", ".embeddings")
        if suffix is not None and order.index(suffix) > order.index(self.name[len(self._base):]):
            self.then(self._base + suffix)

    def record(self) -> None:
        self._recorder.add(self.name, self.computing, self._tracker.get_tracker_snapshot("peak"), self._flops.total)

    def then(self, name: str, computing: tuple[str, ...] | None = None) -> None:
        """Record this phase up to now and go on as phase `name` (its peak starts from the present), with the
        models in `computing` running in it (default: the same as now)."""
        self.record()
        self._tracker.restart_peak()
        self._flops.total = 0
        self.name = name
        if computing is not None:
            self.computing = tuple(computing)
        if self._base is None and name.startswith("backward"):
            self._base = name


def _categories(snapshot: dict) -> dict[str, int]:
    """MemTracker's per-device snapshot summed over devices, in this package's category names."""
    from torch.distributed._tools.mem_tracker import _MemRefType

    names = {_MemRefType.PARAM: "params", _MemRefType.BUFFER: "buffers", _MemRefType.GRAD: "grads",
             _MemRefType.OPT: "optimizer", _MemRefType.ACT: "activations", _MemRefType.TEMP: "temporaries",
             _MemRefType.OTH: "other"}
    out = dict.fromkeys(CATEGORIES, 0)
    for device_snapshot in snapshot.values():
        for key, value in device_snapshot.items():
            if key in names:
                out[names[key]] += int(value)
    return out


def model_memory(models: JobModels) -> tuple[ModelMemory, ...]:
    """Sizes of each model, with the AdamW state that belongs to its parameters."""
    state = models.optimizer.state
    out = []
    for role, module, trainable in models.roles():
        params = list(module.parameters())
        layers = decoder_layers(module)
        layer_bytes = storage_bytes(layers[0].parameters()) if layers is not None and len(layers) else 0
        optimizer_bytes = storage_bytes(v for p in params for v in state.get(p, {}).values()
                                        if isinstance(v, torch.Tensor)) if trainable else 0
        out.append(ModelMemory(role=role, trainable=trainable, params=sum(p.numel() for p in params),
                               param_bytes=storage_bytes(params), layers=len(layers) if layers is not None else 0,
                               layer_bytes=layer_bytes, optimizer_bytes=optimizer_bytes))
    return tuple(out)


# ----------------------------------------------------------------------------- one trace, and the extrapolation


def resolve_configs(spec: JobSpec) -> tuple[Any, Any, dict[str, str]]:
    """(policy config, reward config or None, where each came from); UnknownModelError for an unknown source."""
    from rlmt.memtrace.model_config import model_config

    found = model_config(spec.model)
    if found is None:
        raise UnknownModelError(f"no configuration found offline for model {spec.model!r}")
    origins = {"policy": found[1]}
    reward = None
    if spec.reward_model is not None:
        rm = model_config(spec.reward_model)
        if rm is None:
            raise UnknownModelError(f"no configuration found offline for reward model {spec.reward_model!r}")
        reward, origins["reward"] = rm[0], rm[1]
    return found[0], reward, origins


def trace_at_depth(spec: JobSpec, policy_config, reward_config, depths: dict[str, int]) -> TraceResult:
    """One trace with the given depths (``{"policy": n, "reward": m}``), nothing extrapolated."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    global _traces
    _traces += 1
    with FakeTensorMode(), unpacked_rows():
        models = build_models(spec, policy_config, reward_config, policy_layers=depths["policy"],
                              reward_layers=depths.get("reward"))
        result = record_step(spec, models)
    return TraceResult(spec=spec, phases=result.phases, models=result.models, traced_depths=(dict(depths),))


@contextlib.contextmanager
def unpacked_rows():
    """Tell transformers what it cannot read from fake position ids: the trace's rows are not packed.

    Without an attention mask, transformers looks for several sequences packed into one row in the
    position ids (``masking_utils.find_packed_sequence_indices``), a check on values: on fake tensors it
    assumes packing and builds a block mask the real, unpacked rows never get. The trace's rows are
    single sequences by construction, so the check gives the answer it gives on them: none packed.
    """
    from transformers import masking_utils

    saved = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = saved


def record_step(spec: JobSpec, models: JobModels) -> TraceResult:
    """Run the job's step on `models` phase by phase under the recorder: fake models (a trace) or real ones.

    Real models (prepared with :func:`rlmt.memtrace.models.prepare`) give what a real step allocates,
    tracked by the same MemTracker: what the tests compare a trace with.
    """
    from rlmt.memtrace.gpu_kernels import gpu_kernel_memory

    kernels = gpu_kernel_memory() if spec.kernels == "gpu" else contextlib.nullcontext()
    recorder = PhaseRecorder(models)
    with kernels, warnings.catch_warnings():
        # MemTracker warns once per module whose backward hook outlives it (TRL's fused head); nothing is lost
        warnings.filterwarnings("ignore", message="Module is None")
        jobs.run_step(spec, models, recorder)
    return TraceResult(spec=spec, phases=tuple(recorder.phases), models=model_memory(models))


def trace(spec: JobSpec) -> TraceResult:
    """The job's step at its models' own depths (see the module docstring); UnknownModelError if a config is missing."""
    start = time.perf_counter()
    policy_config, reward_config, origins = resolve_configs(spec)
    full = {"policy": policy_config.num_hidden_layers}
    if reward_config is not None:
        full["reward"] = reward_config.num_hidden_layers
    if spec.layers is not None:
        result = trace_at_depth(spec, policy_config, reward_config,
                                {group: min(spec.layers, n) for group, n in full.items()})
    else:
        base = {group: min(BASE_DEPTH, n) for group, n in full.items()}
        deep = [group for group, n in full.items() if n > BASE_DEPTH + 1]  # shallower models are traced whole
        base.update({group: full[group] for group in full if group not in deep})
        at_base = trace_at_depth(spec, policy_config, reward_config, base)
        deeper = {group: trace_at_depth(spec, policy_config, reward_config, {**base, group: BASE_DEPTH + 1})
                  for group in deep}
        result = extrapolate(at_base, deeper, {group: full[group] - BASE_DEPTH for group in deep})
    return _finish(result, origins, time.perf_counter() - start)


def extrapolate(base: TraceResult, deeper: dict[str, TraceResult], extra_layers: dict[str, int]) -> TraceResult:
    """``base + sum_g (deeper[g] - base) * extra_layers[g]`` for every byte count, FLOP count and model size."""

    def line(value_of) -> int:
        v0 = value_of(base)
        return int(round(v0 + sum((value_of(deeper[g]) - v0) * extra_layers[g] for g in deeper)))

    phases = []
    for i, phase in enumerate(base.phases):
        counts = {k: line(lambda r, k=k: r.phases[i].bytes[k]) for k in phase.bytes}
        phases.append(PhaseMemory(phase.name, counts, line(lambda r: r.phases[i].flops), phase.computing))
    models = []
    for j, m in enumerate(base.models):
        models.append(ModelMemory(role=m.role, trainable=m.trainable,
                                  params=line(lambda r: r.models[j].params),
                                  param_bytes=line(lambda r: r.models[j].param_bytes),
                                  layers=line(lambda r: r.models[j].layers), layer_bytes=m.layer_bytes,
                                  optimizer_bytes=line(lambda r: r.models[j].optimizer_bytes)))
    depths = (base.traced_depths[0],) + tuple(deeper[g].traced_depths[0] for g in deeper)
    return TraceResult(spec=base.spec, phases=tuple(phases), models=tuple(models), traced_depths=depths)


def _finish(result: TraceResult, origins: dict[str, str], seconds: float) -> TraceResult:
    from importlib import metadata

    def version(name: str) -> str | None:  # TRL is needed by the TRL jobs only (a PPO trace runs without it)
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    versions = {"torch": torch.__version__, "transformers": version("transformers"), "trl": version("trl"),
                "tracer": TRACER_VERSION}
    return TraceResult(spec=result.spec, phases=result.phases, models=result.models,
                       traced_depths=result.traced_depths, config_origins=origins, seconds=seconds, versions=versions)
