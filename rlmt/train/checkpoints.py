"""Checkpoint layout of a training run, crash-safe resume, and the choice of the evaluated checkpoint.

Layout of ``OUT`` (``results/checkpoints/<cell>/`` for RL, ``<model>.work/`` for SFT)::

    OUT/step-<N>/        a complete checkpoint: model dir (safetensors, tokenizer, longcot_config.json)
                         + trainer_state.json + optimizer/scheduler/RNG state + checkpoint.json
    OUT/checkpoint-<N>/  the Hugging Face Trainer's staging dir while it writes; never read
    OUT/final/           the selected checkpoint as a plain model dir + selected.json (written last)

Why this shape: the Trainer writes ``checkpoint-<N>`` file by file, so a ``kill -9`` can leave a
half-written dir. Only after the Trainer has written everything (``on_save``) is the staging dir
renamed to ``step-<N>`` — a rename is atomic on one filesystem — so every ``step-<N>`` is complete
and resume never has to guess. ``final/`` is the Snakemake output of the rule, so it is built in a
temporary dir and renamed into place last: its existence means the run finished.

One writer at a time: a run claims ``OUT`` (an ``flock`` on ``.<OUT name>.writer.lock`` beside
it, held until ``final/`` is written or the process exits) before it clears crash leftovers, so a
rerun waits for a still-running earlier job (the orphan a ``kill -9`` of Snakemake leaves) instead
of training beside it. A checkpoint is resumed from only when its weights are safetensors.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

from rlmt.thinking import LONGCOT_FILE, ThinkingFormat

STEP_PREFIX = "step-"
STAGING_PREFIX = "checkpoint-"  # transformers' PREFIX_CHECKPOINT_DIR
FINAL_DIR = "final"
META_FILE = "checkpoint.json"
SELECTED_FILE = "selected.json"
# Trainer state that a resume needs but an evaluated model dir does not carry.
TRAINING_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                        META_FILE)
_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")

SelectRule = int | Literal["last", "best_val_reward"]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be selected or found."""


def step_dir(out: str | Path, step: int) -> Path:
    return Path(out) / f"{STEP_PREFIX}{step}"


def completed_steps(out: str | Path) -> dict[int, Path]:
    """Complete checkpoints under `out` (step -> dir), ascending; staging and temp dirs are ignored."""
    out = Path(out)
    found: dict[int, Path] = {}
    if not out.is_dir():
        return found
    for p in out.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / META_FILE).is_file():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint to resume from, or None for a fresh start.

    Its weights must be safetensors only (:func:`check_checkpoint_weights`): the Trainer's resume
    would otherwise ``torch.load`` a ``pytorch_model.bin`` it finds there.
    """
    steps = completed_steps(out)
    if not steps:
        return None
    latest = steps[max(steps)]
    check_checkpoint_weights(latest)
    return latest


def _is_training_state(name: str) -> bool:
    return name in TRAINING_STATE_FILES or (name.startswith("rng_state") and name.endswith(".pth"))


def check_checkpoint_weights(ckpt: str | Path) -> None:
    """Raise :class:`UnsafeWeightsError` unless the checkpoint's weights are safetensors only.

    Like :func:`rlmt.models.loading.check_safetensors` for a model dir, except that the training
    state a checkpoint carries beside its weights (optimizer, scheduler, per-rank RNG state,
    training args) is not weights and is allowed.
    """
    from rlmt.models.loading import UNSAFE_WEIGHT_SUFFIXES, UnsafeWeightsError

    ckpt = Path(ckpt)
    safe = sorted(ckpt.glob("*.safetensors"))
    unsafe = sorted(p.name for p in ckpt.iterdir()
                    if p.is_file() and p.suffix in UNSAFE_WEIGHT_SUFFIXES and not _is_training_state(p.name))
    if not safe:
        raise UnsafeWeightsError(f"{ckpt}: no *.safetensors weights ({', '.join(unsafe) or 'no weight files'}); "
                                 "rlmt loads safetensors only, so this checkpoint cannot be resumed from")
    if unsafe:
        raise UnsafeWeightsError(f"{ckpt}: pickled weight files beside the safetensors ({', '.join(unsafe)}); "
                                 "remove them before resuming so that nothing can load them by accident")


# Writer locks this process holds (path -> open file); the kernel releases them when it exits, kill -9 included.
_WRITER_LOCKS: dict[Path, object] = {}


def writer_lock_path(out: str | Path) -> Path:
    """The lock file beside `out` (beside, so that `out` itself holds only checkpoints)."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.writer.lock"


def claim_writer(out: str | Path, *, log=print) -> Path:
    """Become the only process writing checkpoints into `out`, waiting for a previous writer to exit.

    A job whose parent was killed (``kill -9`` of Snakemake leaves its running job alive) keeps
    training into `out`; the same command run again must not train beside it, nor delete its
    staging dirs as crash leftovers. So the first writer holds an exclusive ``flock`` on
    :func:`writer_lock_path` for its whole life, and the next one waits here until that process
    is gone, then resumes from what it left. Only the main process (``RANK`` 0 or unset) claims:
    the other ranks of a launch write nothing.
    """
    import fcntl
    import os

    path = writer_lock_path(out)
    if int(os.environ.get("RANK", "0") or 0) != 0 or path in _WRITER_LOCKS:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = path.open("a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        log(f"{out}: {holder} is still writing here; waiting for it to exit, then resuming from what it left")
        fcntl.flock(fh, fcntl.LOCK_EX)
    except OSError as err:  # a filesystem without flock (some network mounts): go on unguarded, say so
        log(f"{out}: cannot lock {path} ({err}); nothing stops a second writer here")
        fh.close()
        return path
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}\n")
    fh.flush()
    _WRITER_LOCKS[path] = fh
    return path


def release_writer(out: str | Path) -> None:
    """Give up the claim on `out` (done writing; a process that exits releases it anyway)."""
    fh = _WRITER_LOCKS.pop(writer_lock_path(out), None)
    if fh is not None:
        fh.close()


def discard_incomplete(out: str | Path) -> list[Path]:
    """Remove what a crash left behind (Trainer staging dirs, half-built final/ or step dirs).

    First claims `out` (:func:`claim_writer`): what looks half-written may be a live writer's work.
    """
    out = Path(out)
    removed: list[Path] = []
    if not out.is_dir():
        return removed
    claim_writer(out)
    for p in out.iterdir():
        incomplete_step = _STEP_RE.match(p.name) and not (p / META_FILE).is_file()
        if p.is_dir() and (p.name.startswith(STAGING_PREFIX) or p.name.endswith(".tmp") or incomplete_step):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def read_meta(ckpt: str | Path) -> dict:
    return json.loads((Path(ckpt) / META_FILE).read_text())


def finalize_checkpoint(staging: str | Path, out: str | Path, step: int, fmt: ThinkingFormat,
                        val_reward: float | None = None) -> Path:
    """Turn the Trainer's finished staging dir into ``step-<N>``: thinking format, metadata, atomic rename."""
    staging, target = Path(staging), step_dir(out, step)
    write_format(staging, fmt)
    (staging / META_FILE).write_text(json.dumps({"step": step, "val_reward": val_reward}, indent=2) + "\n")
    if target.exists():  # a step re-saved after resume: the new one wins
        shutil.rmtree(target)
    staging.rename(target)
    return target


def write_format(model_dir: str | Path, fmt: ThinkingFormat) -> None:
    """The model dir's longcot_config.json: written for thinking formats, absent for non-thinking ones."""
    path = Path(model_dir) / LONGCOT_FILE
    if fmt.longcot:
        fmt.save(model_dir)
    elif path.exists():
        path.unlink()


def prune(out: str | Path, keep_last: int | None, protect: set[int] = frozenset()) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (None keeps all); `protect` steps stay."""
    if keep_last is None:
        return []
    steps = completed_steps(out)
    doomed = [s for s in list(steps)[: max(len(steps) - keep_last, 0)] if s not in protect]
    for s in doomed:
        shutil.rmtree(steps[s])
    return [steps[s] for s in doomed]


def select_step(out: str | Path, rule: SelectRule) -> int:
    """The step the rule picks among the complete checkpoints.

    ``int``: exactly that step (the paper's README took 135 of 234); ``"last"``: the newest;
    ``"best_val_reward"``: the highest validation reward recorded with a checkpoint (ties: earliest).
    """
    steps = completed_steps(out)
    if not steps:
        raise CheckpointError(f"{out}: no complete checkpoint (step-<N>/ with {META_FILE}) to select from")
    if rule == "last":
        return max(steps)
    if rule == "best_val_reward":
        scored = {s: read_meta(p).get("val_reward") for s, p in steps.items()}
        scored = {s: v for s, v in scored.items() if v is not None}
        if not scored:
            raise CheckpointError(f"{out}: select_step 'best_val_reward' needs validation rewards, but no checkpoint "
                                  "has one (was a validation set given?)")
        return max(scored, key=lambda s: (scored[s], -s))
    if isinstance(rule, int) and not isinstance(rule, bool):
        if rule not in steps:
            raise CheckpointError(f"{out}: select_step {rule} is not a saved checkpoint; saved steps: {list(steps)} "
                                  "(make it a multiple of checkpoints.save_steps, or the last step)")
        return rule
    raise CheckpointError(f"select_step: unknown rule {rule!r}; allowed: an int step, 'last', 'best_val_reward'")


def protected_steps(out: str | Path, rule: SelectRule) -> set[int]:
    """Steps that pruning must keep so that `rule` can still pick them at the end."""
    if rule == "best_val_reward":
        try:
            return {select_step(out, rule)}
        except CheckpointError:
            return set()
    if isinstance(rule, int) and not isinstance(rule, bool):
        return {rule}
    return set()


def write_final(out: str | Path, step: int, fmt: ThinkingFormat, rule: SelectRule) -> Path:
    """Copy checkpoint `step` into ``OUT/final/`` as a plain model dir, atomically (tmp dir, then rename)."""
    out = Path(out)
    src = completed_steps(out).get(step)
    if src is None:
        raise CheckpointError(f"{out}: step {step} has no complete checkpoint")
    tmp, final = out / f"{FINAL_DIR}.tmp", out / FINAL_DIR
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for f in src.iterdir():
        if f.is_file() and not _is_training_state(f.name):
            shutil.copy2(f, tmp / f.name)
    write_format(tmp, fmt)
    meta = read_meta(src)
    (tmp / SELECTED_FILE).write_text(json.dumps(
        {"step": step, "rule": rule, "source": str(src), "val_reward": meta.get("val_reward")}, indent=2) + "\n")
    old = out / f"{FINAL_DIR}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    release_writer(out)  # final/ is the last thing a run writes
    return final
