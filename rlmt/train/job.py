"""One training job across its processes: what SFT, GRPO, DPO and PPO do the same way around ranks.

Under ``accelerate launch`` every process is a rank. The order every trainer follows:

1. :func:`process_state` first: the process group exists and this rank's device is known
   (``cuda:<LOCAL_RANK>`` on a GPU node, ``cpu`` here) before any model is loaded;
2. the reward model (and, for DPO, the pair sampling) next, as a full copy on that device —
   before the trainer's arguments exist, so DeepSpeed ZeRO-3 never partitions a model that is
   only run forward outside the engine;
3. the trainer's arguments (TRL's config) next: under ``config/accelerate/zero3.yaml`` they make
   the DeepSpeed config known to transformers, so the policy loaded after them is partitioned
   as it loads (``zero3_init_flag``) instead of materialised whole on every rank;
4. the policy, the trainer, training;
5. :func:`finish`: one process selects the checkpoint and writes ``final/``; the others wait;
6. :func:`close_process_group` (the CLI, after the job's MLflow run closed): all ranks leave together.

Shared data (DPO's pairs) is built by the main process alone (:func:`on_main_then_wait`), from
what every rank produced for its share (DPO's samples, :mod:`rlmt.train.dpo_pairs`);
MLflow logging happens only where :mod:`rlmt.tracking` opened the job's run, the main process.

``RLMT_RANK_REPORT_DIR`` (tests only): each rank writes ``<stage>-rank<N>.json`` there — the
devices its models sit on, whether the policy was ZeRO-3-partitioned as it loaded, and a digest
plus the full values of its final parameters (gathered first when they are sharded) — so a test
can check every rank against the others and against the written model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from rlmt.thinking import ThinkingFormat
from rlmt.train import checkpoints as ckpt

RANK_REPORT_ENV = "RLMT_RANK_REPORT_DIR"
T = TypeVar("T")


# ----------------------------------------------------------------------------- processes and devices


def process_state():
    """accelerate's process state (one per process, shared by every Accelerator made later).

    Creating it starts the process group under a launcher (gloo on CPU, NCCL on GPUs; DeepSpeed's
    when the launcher's config is DeepSpeed) and fixes this rank's device.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    # ACCELERATE_USE_CPU (CPU processes, gloo) must reach PartialState itself: only AcceleratorState
    # reads it, and a PartialState made without it on a CPU machine is a lone process.
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def rank_device(state=None) -> str:
    """This rank's device as a string (``cuda:<LOCAL_RANK>`` or ``cpu``)."""
    state = state or process_state()
    device = state.device
    return "cpu" if device.type == "cpu" else str(device)


def zero3_partitioning() -> bool:
    """True when a model loaded now is partitioned by DeepSpeed ZeRO-3 as it loads."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(is_deepspeed_zero3_enabled())


def wait_until(done: Callable[[], bool], *, poll_s: float = 5.0) -> None:
    """Poll `done()` (a result another process writes to disk) until it is true.

    Not a collective: what is awaited can take longer than the process group's timeout. If the
    process that should write it fails, the launcher ends this one.
    """
    import time

    while not done():
        time.sleep(poll_s)


def on_main_then_wait(state, build: Callable[[], T], done: Callable[[], bool], *, poll_s: float = 5.0) -> T | None:
    """Run `build` on the main process only; every other rank waits until `done()` (its result on disk).

    The others poll `done` (:func:`wait_until`) instead of sitting in a collective: building can take
    longer than the process group's timeout (DPO's main process waits for every rank's share of the
    samples before it pairs them). The main process's return value is given to it alone (others get
    None). If the main process fails, the launcher ends the job's other processes.
    """
    if state.num_processes == 1:
        return build()
    result = None
    if state.is_main_process:
        result = build()
    else:
        wait_until(done, poll_s=poll_s)
    state.wait_for_everyone()
    return result


# ----------------------------------------------------------------------------- the reward


def cell_reward(reward: Any, fmt: ThinkingFormat, *, strict: bool, device: str = "auto"):
    """The :class:`rlmt.rewards.AnswerReward` a trainer scores with, built for this rank's device.

    `reward` is what the trainer was given: a :class:`rlmt.rewards.NamedReward` (the cell's
    ``reward_models.<rm>`` entry and its input files, from the CLI; built here, with the policy's
    thinking format, after the process group exists), a classifier reward-model directory (its
    default settings), or an ``AnswerReward`` built already (tests, programmatic use: it must have
    the policy's format and the run's ``strict``, or the answers it scores are not the policy's).
    """
    from rlmt.rewards import AnswerReward, NamedReward
    from rlmt.train.runtime import TrainingSetupError

    if isinstance(reward, AnswerReward):
        if reward.fmt != fmt or reward.strict != strict:
            raise TrainingSetupError(f"the given {reward.kind or type(reward).__name__} reward extracts answers with "
                                     f"format {reward.fmt.name} (strict={reward.strict}), the policy with {fmt.name} "
                                     f"(strict={strict}): build it with the policy's format and the run's strict")
        return reward
    if isinstance(reward, (str, Path)):
        reward = NamedReward.classifier_dir(reward)
    if not isinstance(reward, NamedReward):
        raise TypeError(f"a reward is an AnswerReward, a NamedReward or a reward-model dir, got {type(reward).__name__}")
    try:
        return reward.build(fmt, strict=strict, device=device)
    except ValueError as err:  # a missing input file or entry: a setup error with the reward's own words
        raise TrainingSetupError(str(err)) from None


def note_reward_loaded(reward) -> None:
    """:func:`note_loaded` for the first model a reward holds (a classifier's; a mix's first part's), if any."""
    models = list(_models_of(reward))
    if models:
        note_loaded("reward", models[0])


def reward_device(reward) -> str:
    """Where the reward's model sits, for the rank report ('none' for a reward that holds no model)."""
    models = list(_models_of(reward))
    return str(next(models[0].parameters()).device) if models else "none"


def _models_of(reward):
    model = getattr(reward, "model", None)
    if model is not None:
        yield model
    for part in getattr(reward, "parts", {}).values():
        yield from _models_of(part)


# ----------------------------------------------------------------------------- training, resumed


def train_from(trainer, resume: Path | None) -> bool:
    """``trainer.train()``, resumed from `resume` when given; False when there was nothing left to train.

    A checkpoint whose ``trainer_state.json`` already reached its ``max_steps`` (the job was killed
    after its last save, before final/) is not resumed: the Trainer checks ``max_steps`` only after
    a step, so it would train one step past the schedule and change what final/ selects.
    """
    if resume is not None:
        state_file = Path(resume) / "trainer_state.json"
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
                return False
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return True


# ----------------------------------------------------------------------------- the end of a job


def finish(out: Path, fmt: ThinkingFormat, rule: ckpt.SelectRule, accelerator=None) -> Path:
    """Select the evaluated checkpoint, write ``out/final/`` last, and record it in MLflow.

    Under several processes only the main one writes; the others wait until final/ exists.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        final = Path(out) / ckpt.FINAL_DIR
        if accelerator.is_main_process:
            final = finish(out, fmt, rule)
        accelerator.wait_for_everyone()
        return final
    step = ckpt.select_step(out, rule)
    final = ckpt.write_final(out, step, fmt, rule)
    log_setup({"selected_step": step})
    import mlflow

    if mlflow.active_run() is not None:
        from rlmt.tracking import _retry, log_checkpoint_model, log_outputs

        log_outputs({"final": final})
        # final/ as the run's logged model (its directory, not a copy), with the step and rule that chose it
        selected = json.loads((final / ckpt.SELECTED_FILE).read_text())
        model_id = log_checkpoint_model(final, Path(out).name, step=step,
                                        params={"selected_step": step, "select_rule": rule, "source": selected["source"]})
        if model_id is not None and selected.get("val_reward") is not None:
            _retry(mlflow.log_metric, "selected.val_reward", float(selected["val_reward"]), step=step, model_id=model_id)
    return final


def close_process_group() -> None:
    """Leave the job's process group together, at the end of a job that succeeded on every rank.

    A process that exits while its gloo (or NCCL) group is still open can be aborted (SIGABRT) as
    its peers tear their connections down, and the launcher then fails a job whose training had
    finished. Every rank waits at one barrier, then destroys its group. Nothing happens in a
    single process. Not for error paths: a rank that failed never reaches the barrier.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def log_setup(params: dict) -> None:
    """``run.<key>`` params of the job's run (nothing without one: other ranks, library calls)."""
    import mlflow

    if mlflow.active_run() is not None:
        from rlmt.tracking import log_params

        log_params({f"run.{k}": v for k, v in params.items()})


# ----------------------------------------------------------------------------- the rank report (tests)

_loaded: dict[str, dict[str, Any]] = {}


def note_loaded(name: str, model) -> None:
    """Record, for the rank report, where `model` sits right after loading and whether ZeRO-3 partitioned it."""
    if not os.environ.get(RANK_REPORT_ENV):
        return
    param = next(model.parameters())
    _loaded[name] = {"device": str(param.device), "zero3_partitioned": hasattr(param, "ds_id"),
                     "zero3_enabled": zero3_partitioning()}


def full_parameters(model) -> dict[str, Any]:
    """Every parameter of `model` as a full CPU tensor, on every rank (collective when sharded).

    ZeRO-3 parameters are gathered with ``GatheredParameters``, FSDP2 DTensors with
    ``full_tensor()``; plain and DDP parameters are read as they are. Every rank must call it.
    """
    out = {}
    for name, p in model.named_parameters():
        if hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                out[name] = p.detach().float().cpu().clone()
        elif hasattr(p, "full_tensor"):
            out[name] = p.full_tensor().detach().float().cpu()
        else:
            out[name] = p.detach().float().cpu().clone()
    return out


def report_rank(stage: str, state, model, *, devices: dict[str, str] | None = None) -> None:
    """Write this rank's report (see the module docstring); a no-op unless ``RLMT_RANK_REPORT_DIR`` is set.

    Collective when the parameters are sharded: every rank calls it at the same point.
    """
    folder = os.environ.get(RANK_REPORT_ENV)
    if not folder:
        return
    from safetensors.torch import save_file

    params = full_parameters(model)
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].numpy().tobytes())
    folder_path = Path(folder)
    folder_path.mkdir(parents=True, exist_ok=True)
    rank = state.process_index
    save_file({k: v.contiguous() for k, v in params.items()}, str(folder_path / f"{stage}-rank{rank}.safetensors"))
    report = {"stage": stage, "rank": rank, "local_rank": state.local_process_index, "world": state.num_processes,
              "distributed_type": str(state.distributed_type.value), "expected_device": rank_device(state),
              "loaded": dict(_loaded), "devices": devices or {}, "params_sha256": h.hexdigest(),
              "n_params": sum(v.numel() for v in params.values())}
    (folder_path / f"{stage}-rank{rank}.json").write_text(json.dumps(report, indent=1) + "\n")
