"""One part of the GPU check in its own process: a few real steps of one trainer, measured per phase.

``bench/gpu_check.py`` starts this once per part (a fresh process each: its own CUDA context, its own
vLLM engine, its own memory peaks, and a process the orchestrator can kill at the part's time cap):

    python bench/gpu_check_parts.py device --work DIR      # device facts and the measured matmul rate
    python bench/gpu_check_parts.py grpo|ppo|dpo --work DIR --deadline-s S

Each part calls the trainer's own entry point (``train_grpo``, ``train_ppo``, ``prepare_pairs`` +
``train_dpo``) with the paper's settings from ``config/paper.yaml`` (only batch sizes, step counts,
checkpoints and validation are the bench's, :func:`settings_for`) and times it by wrapping the methods
that delimit its phases; nothing is simulated. Phases, and where their boundaries are:

=========  =====================================================================================================
phase      GRPO (TRL)                        PPO (rlmt)                         DPO (rlmt pairs + TRL)
=========  =====================================================================================================
generate   ``GRPOTrainer._generate_single_   ``hf_generate`` or                 ``Generator.generate`` of the pair
           turn`` (vLLM: weight sync, wake,  ``VLLMRolloutEngine.generate``     sampler (vLLM or transformers)
           sample, sleep; else HF generate)  (weight sync, wake, sample, sleep)
score      the rest of ``_generate_and_      the rest of ``make_experience``    ``pairs``: the rest of
           score_completions`` (reward,      (old log-probs, reward, values,    ``prepare_pairs`` (engine start,
           reference log-probs, advantages)  GAE)                               reward scoring, pairing)
update     from there to ``on_step_end``     ``ppo_update``                     ``on_step_begin`` to ``on_step_end``
           (loss, backward, optimizer step)                                     (TRL's DPO loss, backward, step)
=========  =====================================================================================================

At each boundary the clock is read after a CUDA synchronize and ``torch.cuda.reset_peak_memory_stats`` starts the
next phase; a phase's peak is ``torch.cuda.max_memory_allocated`` at its end, and the card's used memory (NVML's,
as ``nvidia-smi`` shows it: every allocator and process, vLLM's engine and the CUDA context included) is polled
every 20 ms (:class:`DevicePeak`). After each step the part rewrites its result JSON, so a part killed at its cap still
reports the steps it finished; it stops by raising :class:`StopAfterMeasuring` once its steps are measured (or
when the next step would overrun its deadline), before any checkpoint is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "config" / "paper.yaml"
PARTS = ("grpo", "ppo", "dpo")
BENCH_FILE = "bench.json"
GIB = 2 ** 30


# ----------------------------------------------------------------------------- what the bench runs


@dataclass(frozen=True)
class Bench:
    """The shapes and files of one check, written by the orchestrator and read by every part (``bench.json``).

    Lengths: the paper's (``config/paper.yaml``: prompts 1,024 for GRPO and 896 for PPO, completions 4,096, DPO
    rows cut at max_length 4,096) on a GPU; a few tokens in the tiny CPU run.
    """

    tiny: bool
    steps: int
    grpo_prompt: int
    ppo_prompt: int
    completion: int
    dpo_max_length: int
    grpo_prompts_per_step: int
    grpo_generations: int
    ppo_rows: int
    ppo_micro: int
    dpo_prompts: int
    dpo_samples: int
    policy: str
    reward: str
    prompts: str
    dpo_prompt_file: str
    work: str

    def save(self) -> None:
        (Path(self.work) / BENCH_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, work: str | Path) -> "Bench":
        return cls(**json.loads((Path(work) / BENCH_FILE).read_text()))


def paper_block(algo: str) -> dict[str, Any]:
    """``algorithms.<algo>`` of config/paper.yaml, as written there."""
    import yaml

    return yaml.safe_load(PAPER_CONFIG.read_text())["algorithms"][algo]


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def settings_for(part: str, b: Bench, use_vllm: bool, bf16: bool | None = None):
    """The part's settings: the paper's block with the bench's batch sizes, steps, lengths and no checkpoints.

    `use_vllm` is always explicit (``rlmt.train.runtime.vllm_wanted`` refuses an unset value on a GPU without
    vLLM); `bf16` None: the trainers' rule (bf16 exactly on a GPU).
    """
    from rlmt.config import DPOConfig, GRPOConfig, PPOConfig

    no_checkpoints = {"save_steps": 10 ** 6, "select_step": "last", "save_total_limit": 1}
    rollout = {"max_completion_length": b.completion, "use_vllm": use_vllm}
    if part == "grpo":
        changes = {"prompts_per_step": b.grpo_prompts_per_step, "prompts_per_update": b.grpo_prompts_per_step,
                   "num_generations": b.grpo_generations, "max_steps": b.steps, "val_prompts": 0,
                   "log_samples_every": 10 ** 6, "checkpoints": no_checkpoints,
                   "rollout": {**rollout, "max_prompt_length": b.grpo_prompt}}
        return GRPOConfig(**_merge(paper_block("grpo"), changes), bf16=bf16)
    if part == "ppo":
        changes = {"prompts_per_step": b.ppo_rows, "mini_batch_size": b.ppo_rows, "micro_batch_size": b.ppo_micro,
                   "generation_batch_size": b.ppo_rows, "max_steps": b.steps, "val_prompts": 0,
                   "log_samples_every": 0, "checkpoints": no_checkpoints,
                   "rollout": {**rollout, "max_prompt_length": b.ppo_prompt}}
        return PPOConfig(**_merge(paper_block("ppo"), changes), bf16=bf16)
    if part == "dpo":
        # one pair per optimizer step (the paper's per-device micro-batch); the paper's 128-pair steps only add
        # accumulation, not memory
        changes = {"samples_per_prompt": b.dpo_samples, "global_batch_size": 1, "max_steps": b.steps,
                   "max_length": b.dpo_max_length, "checkpoints": no_checkpoints,
                   "rollout": {"max_completion_length": b.completion}}
        return DPOConfig(**_merge(paper_block("dpo"), changes), bf16=bf16)
    raise ValueError(f"unknown part {part!r}; parts: {PARTS}")


def installed(name: str) -> bool:
    """Whether `name` can be imported here (a finder that refuses it counts as not installed)."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def trl_usable() -> tuple[bool, str]:
    """(whether TRL's trainers can run here, why not): trl and the datasets library its trainers read."""
    missing = [m for m in ("trl", "datasets") if not installed(m)]
    return not missing, f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"


def vllm_usable() -> tuple[bool, str]:
    """(whether the production rollouts through vLLM can run here, why not)."""
    import torch

    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if not installed("vllm"):
        return False, "vllm is not installed"
    return True, ""


# ----------------------------------------------------------------------------- measuring


class StopAfterMeasuring(Exception):
    """Raised from a step boundary once the part has what it came for; the reason is the message."""


class DevicePeak:
    """The card's used memory as NVML reports it (``nvidia-smi``'s figure: every allocator and process), polled on
    a thread.

    NVML, not ``cudaMemGetInfo``: a CUDA call from another thread can invalidate a CUDA graph being captured (vLLM
    captures its graphs at start). Without NVML (``pynvml``, which vLLM installs) there is no device figure.
    """

    def __init__(self, interval_s: float = 0.02):
        import torch

        self._used = lambda: torch.cuda.device_memory_used(0)
        self.interval_s = interval_s
        self.peak = self.used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    @staticmethod
    def available() -> bool:
        return installed("pynvml")

    def used(self) -> int:
        return self._used()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.used())
            except Exception as err:  # NVML gone (driver reset, teardown): keep the peak so far, stop polling
                print(f"device memory polling stopped: {type(err).__name__}: {err}", flush=True)
                return
            time.sleep(self.interval_s)

    def reset(self) -> None:
        self.peak = self.used()


class PhaseMeter:
    """Wall time and memory peaks of the named phases of one step (see the module docstring).

    :meth:`switch` ends the running phase and starts the next; a name seen twice in a step adds its seconds and
    keeps the larger peaks. The phase ``other`` (between steps: logging, data loading, engine start) is not kept.
    """

    def __init__(self, on_switch: Callable[[dict], None] | None = None):
        import torch

        self._torch = torch
        self.on_switch = on_switch  # sees the step's phases so far at every boundary
        self.cuda = torch.cuda.is_available()
        self.device = DevicePeak() if self.cuda and DevicePeak.available() else None
        self.name: str | None = None
        self.started = time.perf_counter()
        self.phases: dict[str, dict[str, float]] = {}

    def _now(self) -> float:
        if self.cuda:
            self._torch.cuda.synchronize()
        return time.perf_counter()

    def switch(self, name: str) -> None:
        now = self._now()
        if self.name not in (None, "other"):
            rec = self.phases.setdefault(self.name, {"seconds": 0.0, "torch_peak": 0, "device_peak": 0})
            rec["seconds"] += now - self.started
            if self.cuda:
                rec["torch_peak"] = max(rec["torch_peak"], self._torch.cuda.max_memory_allocated())
                if self.device is not None:
                    rec["device_peak"] = max(rec["device_peak"], self.device.peak)
        if self.cuda:
            self._torch.cuda.reset_peak_memory_stats()
            if self.device is not None:
                self.device.reset()
        if self.on_switch is not None:
            self.on_switch(self.phases)
        self.name, self.started = name, time.perf_counter()

    def take(self) -> dict[str, dict[str, float]]:
        """End the running phase and hand over this step's phases."""
        self.switch("other")
        phases, self.phases = self.phases, {}
        return phases


class Recorder:
    """The part's result file, rewritten after every step; decides when the part stops."""

    def __init__(self, part: str, path: Path, steps: int, deadline_s: float):
        self.part, self.path, self.steps_wanted, self.deadline_s = part, path, steps, deadline_s
        self.begun = time.monotonic()
        self.result: dict[str, Any] = {"part": part, "status": "running", "records": [], "notes": [], "unfinished": {}}
        self.meter = PhaseMeter(on_switch=self._unfinished)
        self.write()

    def set(self, **fields: Any) -> None:
        self.result.update(fields)
        self.write()

    def write(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.begun, 2)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=1) + "\n")
        os.replace(tmp, self.path)

    def _unfinished(self, phases: dict) -> None:
        """The running step's phases so far: what a part killed inside a step still reports (its peaks)."""
        if phases:
            self.result["unfinished"] = {k: dict(v) for k, v in phases.items()}
            self.write()

    def record(self, kind: str, **counts: Any) -> None:
        """Close the running phase and keep one record (``step``: an optimizer step; ``sampling``: DPO's pairs).

        After a ``step``: stop when the wanted steps are measured, or when another step like the last would pass
        the deadline.
        """
        phases = self.meter.take()
        self.result["records"].append({"kind": kind, "phases": phases, **counts})
        self.result["unfinished"] = {}
        self.write()
        done = [r for r in self.result["records"] if r["kind"] == "step"]
        if kind != "step":
            return
        seconds = sum(p["seconds"] for p in phases.values())
        print(f"[{self.part}] step {len(done)}: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in phases.items()),
              flush=True)
        if len(done) >= self.steps_wanted:
            raise StopAfterMeasuring(f"{len(done)} step(s) measured")
        if time.monotonic() - self.begun + 1.2 * seconds > self.deadline_s:
            raise StopAfterMeasuring(f"stopped after {len(done)} of {self.steps_wanted} steps: another would pass "
                                     f"the part's {self.deadline_s:.0f} s cap")


@contextlib.contextmanager
def wrapped(owner: Any, name: str, make: Callable[[Callable], Callable]):
    """Replace ``owner.name`` by ``make(original)`` inside the block."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def phase_around(meter: PhaseMeter, name: str, after: str) -> Callable[[Callable], Callable]:
    """A wrapper maker: the call runs as phase `name`, and phase `after` starts when it returns."""

    def make(original):
        def call(*args, **kwargs):
            meter.switch(name)
            try:
                return original(*args, **kwargs)
            finally:
                meter.switch(after)

        return call

    return make


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def rollout_label(use_vllm: bool, why_not: str, engine: str = "vLLM colocated, sleep mode") -> str:
    return engine if use_vllm else f"HF generate, not the production path ({why_not})"


# ----------------------------------------------------------------------------- the parts


def run_grpo(b: Bench, rec: Recorder) -> None:
    """``train_grpo`` (TRL's GRPOTrainer, vLLM colocated in sleep mode where vLLM runs here)."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from rlmt.train.grpo import train_grpo

    use_vllm, why_not = vllm_usable()
    settings = settings_for("grpo", b, use_vllm)
    rec.set(rollout=rollout_label(use_vllm, why_not), production_rollout=use_vllm,
            geometry=f"{settings.prompts_per_step} prompts x {settings.num_generations} completions per step, "
                     f"{settings.per_device_train_batch_size} per micro-batch")
    meter, batch = rec.meter, {}

    def generate_and_score(original):
        def call(self, *args, **kwargs):
            meter.switch("score")
            out = original(self, *args, **kwargs)
            rows, prompt_width = out["prompt_ids"].shape
            batch.update(rows=rows, prompt_width=prompt_width, completion_width=out["completion_ids"].shape[1],
                         generated=int(out["completion_mask"].sum()))
            meter.switch("update")
            return out

        return call

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            rec.record("step", params=parameter_count(model), **batch,
                       update_tokens=batch["rows"] * (batch["prompt_width"] + batch["completion_width"]))

    with wrapped(GRPOTrainer, "_generate_and_score_completions", generate_and_score), \
            wrapped(GRPOTrainer, "_generate_single_turn", phase_around(meter, "generate", "score")):
        train_grpo(b.policy, b.reward, b.prompts, None, Path(b.work) / "grpo", settings, callbacks=[StepEnd()])


def run_ppo(b: Bench, rec: Recorder) -> None:
    """``train_ppo`` (rlmt's actor-critic loop; rollouts through its colocated vLLM engine where vLLM runs here)."""
    import rlmt.train.ppo as ppo
    import rlmt.train.rollout as rollout
    from rlmt.train.vllm_rollout import VLLMRolloutEngine

    use_vllm, why_not = vllm_usable()
    settings = settings_for("ppo", b, use_vllm)
    rec.set(rollout=rollout_label(use_vllm, why_not), production_rollout=use_vllm,
            geometry=f"{settings.prompts_per_step} prompts per step, micro-batches of {settings.micro_batch_size}")
    meter, batch = rec.meter, {}

    def make_experience(original):
        def call(accelerator, model, *args, **kwargs):
            meter.switch("score")
            out = original(accelerator, model, *args, **kwargs)
            r = out.rollout
            batch.update(rows=len(r), prompt_width=r.prompt_width, completion_width=r.response_mask.shape[1],
                         generated=int(r.response_mask.sum()), params=parameter_count(accelerator.unwrap_model(model)))
            meter.switch("update")
            return out

        return call

    def ppo_update(original):
        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            rec.record("step", **batch, update_tokens=settings.ppo_epochs * batch["rows"] * (
                batch["prompt_width"] + batch["completion_width"]))
            return out

        return call

    with wrapped(ppo, "make_experience", make_experience), wrapped(ppo, "ppo_update", ppo_update), \
            wrapped(rollout, "hf_generate", phase_around(meter, "generate", "score")), \
            wrapped(VLLMRolloutEngine, "generate", phase_around(meter, "generate", "score")):
        ppo.train_ppo(b.policy, b.reward, b.prompts, None, Path(b.work) / "ppo", settings)


def run_dpo(b: Bench, rec: Recorder) -> None:
    """The pair sampling (``prepare_pairs``: vLLM where it runs here, else transformers), then ``train_dpo``
    (TRL's DPOTrainer) on those pairs; without TRL only the sampling runs."""
    from rlmt.generation.transformers_backend import TransformersGenerator
    from rlmt.generation.vllm_backend import VLLMGenerator
    from rlmt.train.dpo_pairs import prepare_pairs
    from rlmt.train.job import process_state, rank_device

    use_vllm, why_not = vllm_usable()
    settings = settings_for("dpo", b, use_vllm)
    backend = "vllm" if use_vllm else "transformers"
    rec.set(rollout=rollout_label(use_vllm, why_not, engine="vLLM engine (the pair sampler's)"),
            production_rollout=use_vllm,
            geometry=f"{b.dpo_prompts} prompts x {settings.samples_per_prompt} samples; one pair per step")
    meter, counted = rec.meter, {"generated": 0, "rows": 0}
    out = Path(b.work) / "dpo"

    def generate(original):
        def call(self, prompts, params):
            meter.switch("generate")
            try:
                completions = original(self, prompts, params)
            finally:
                meter.switch("pairs")
            counted["generated"] += sum(c.n_tokens for outs in completions for c in outs)
            counted["rows"] += sum(len(outs) for outs in completions)
            return completions

        return call

    state = process_state()
    with wrapped(TransformersGenerator, "generate", generate), wrapped(VLLMGenerator, "generate", generate):
        meter.switch("pairs")
        prepare_pairs(b.policy, b.reward, b.dpo_prompt_file, out, settings, backend=backend,
                      device=rank_device(state), state=state)
    stats = json.loads((out / "pairs" / "stats.json").read_text())
    rec.record("sampling", **counted, completion_width=b.completion, pairs=stats["counts"])
    trl_ok, why_not = trl_usable()
    if not trl_ok:
        rec.set(update_skipped=f"TRL's DPOTrainer: {why_not}")
        raise StopAfterMeasuring("pair sampling measured; the update needs trl")

    from transformers import TrainerCallback
    from trl import DPOTrainer

    from rlmt.train.dpo import train_dpo

    tokens = {"update_tokens": 0, "rows": 0, "width": 0}

    def compute_loss(original):
        def call(self, model, inputs, *args, **kwargs):
            ids = inputs["input_ids"]
            tokens["update_tokens"] += ids.numel()
            tokens["rows"] += ids.shape[0]
            tokens["width"] = max(tokens["width"], ids.shape[1])
            return original(self, model, inputs, *args, **kwargs)

        return call

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            tokens.update(update_tokens=0, rows=0, width=0)
            meter.switch("update")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            rec.record("step", params=parameter_count(model), rows=tokens["rows"], completion_width=tokens["width"],
                       prompt_width=0, update_tokens=tokens["update_tokens"])

    with wrapped(DPOTrainer, "compute_loss", compute_loss):
        train_dpo(b.policy, b.reward, b.dpo_prompt_file, out, settings, generation_backend=backend,
                  callbacks=[Steps()])


RUNNERS = {"grpo": run_grpo, "ppo": run_ppo, "dpo": run_dpo}


# ----------------------------------------------------------------------------- the device


def matmul_tflops(device: str, dtype, n: int) -> float:
    """Measured dense matmul rate (TFLOP/s) of this device at this dtype (the mean of timed square products)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    reps = 20 if device.startswith("cuda") else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def device_facts() -> dict[str, Any]:
    """The device, its memory, the dtype the trainers compute in, and its measured matmul rate."""
    import torch

    from rlmt.train.runtime import use_bf16

    cuda = torch.cuda.is_available()
    bf16 = use_bf16(None)
    dtype = torch.bfloat16 if bf16 else torch.float32
    facts = {"cuda": cuda, "dtype": "bfloat16" if bf16 else "float32", "torch": torch.__version__}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        facts.update(name=props.name, total_memory=props.total_memory, cuda_version=torch.version.cuda)
    else:
        facts.update(name="cpu", total_memory=None)
    facts["matmul_tflops"] = matmul_tflops("cuda:0" if cuda else "cpu", dtype, 8192 if cuda else 1024)
    return facts


# ----------------------------------------------------------------------------- entry point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=(*PARTS, "device"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--deadline-s", type=float, default=600.0)
    args = parser.parse_args()
    if args.part == "device":
        (args.work / "device.json").write_text(json.dumps(device_facts(), indent=1) + "\n")
        return
    b = Bench.load(args.work)
    rec = Recorder(args.part, args.work / f"{args.part}.json", b.steps, args.deadline_s)
    code = 0
    try:
        RUNNERS[args.part](b, rec)
    except StopAfterMeasuring as stop:
        rec.set(status="ran", stopped=str(stop))
    except Exception as err:  # the part failed: its error and traceback go to the result, the orchestrator says so
        traceback.print_exc()
        rec.set(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
        code = 1
    else:
        rec.set(status="ran", stopped="the trainer ended")
    sys.stdout.flush()
    sys.stderr.flush()
    # vLLM's engine and NCCL can hang in interpreter teardown; the result is on disk
    os._exit(code)


if __name__ == "__main__":
    main()
