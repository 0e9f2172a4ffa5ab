"""Trainer callbacks shared by SFT, GRPO and DPO: MLflow metrics, the samples table, checkpoints.

The Hugging Face integrations are switched off (``report_to="none"``) because they would open
MLflow runs of their own; these callbacks log into the run that :func:`rlmt.tracking.stage_run`
opened for the job, so every metric lands in the cell's nested run. Without an active run (a
library call outside the CLI) they log nothing and training is unaffected.
"""

from __future__ import annotations

import math
import re
import threading
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from rlmt.thinking import ThinkingFormat
from rlmt.train import checkpoints as ckpt

_METRIC_NAME_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def _active_run():
    import mlflow

    return mlflow.active_run()


def metric_name(key: str) -> str:
    """MLflow accepts letters, digits, ``_ - . /`` and spaces; TRL keys may carry others."""
    return _METRIC_NAME_BAD.sub("_", key)


class MLflowMetricsCallback(TrainerCallback):
    """Every value the Trainer logs (loss, lr, reward, kl, entropy, clip ratios ...) as an MLflow metric."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero or _active_run() is None:
            return
        import mlflow

        from rlmt.tracking import _retry

        metrics = {metric_name(k): float(v) for k, v in logs.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
        if metrics:
            _retry(mlflow.log_metrics, metrics, step=state.global_step)


class SampleBuffer:
    """The latest batch of completions, split into thought and answer, for the samples table.

    The reward function fills it while it scores a batch; :class:`SamplesTableCallback` logs it at
    the end of the optimizer step. A lock guards it because TRL may call async reward functions.
    """

    def __init__(self, max_rows: int = 16):
        self.max_rows = max_rows
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows = list(rows[: self.max_rows])

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            rows, self._rows = self._rows, []
        return rows


class SamplesTableCallback(TrainerCallback):
    """Every `every` steps, log the buffered completions as ``samples/step-<N>.json`` (``mlflow.log_table``)."""

    def __init__(self, buffer: SampleBuffer, every: int):
        self.buffer = buffer
        self.every = max(int(every), 1)
        self.logged_steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        rows = self.buffer.take()
        if not rows or state.global_step % self.every or not state.is_world_process_zero or _active_run() is None:
            return
        import mlflow

        from rlmt.tracking import _retry

        table = {key: [r.get(key) for r in rows] for key in rows[0]}
        table["step"] = [state.global_step] * len(rows)
        _retry(mlflow.log_table, data=table, artifact_file=f"samples/step-{state.global_step:06d}.json")
        self.logged_steps.append(state.global_step)


def wait_for_every_rank() -> None:
    """A barrier over the job's process group (nothing in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointCallback(TrainerCallback):
    """After each Trainer save: write longcot_config.json, rename ``checkpoint-N`` to ``step-N``, keep the last N.

    `keep_last` (``checkpoints.save_total_limit``) counts the newest checkpoints; the one `select_rule`
    will pick is kept besides (:func:`rlmt.train.checkpoints.protected_steps`), so at most
    ``keep_last + 1`` stay. Every rank calls :meth:`on_save`; all wait for each other, then rank 0 renames.

    `val_metric` names the eval log key recorded as the checkpoint's validation reward (GRPO:
    ``eval_reward``; DPO: ``eval_rewards/margins``); evaluation runs before the save of the same step.
    """

    def __init__(self, out: str | Path, fmt: ThinkingFormat, *, keep_last: int | None,
                 select_rule: ckpt.SelectRule = "last", val_metric: str | None = None):
        self.out = Path(out)
        self.fmt = fmt
        self.keep_last = keep_last
        self.select_rule = select_rule
        self.val_metric = val_metric
        self._val: dict[int, float] = {}
        self.saved: list[Path] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.val_metric and metrics and self.val_metric in metrics:
            self._val[state.global_step] = float(metrics[self.val_metric])

    def on_save(self, args, state, control, **kwargs):
        # The Trainer calls on_save on every rank right after that rank's own writes into checkpoint-N (its
        # rng_state_<rank>.pth, its ZeRO shards): rank 0 renames the dir only once every rank is here.
        wait_for_every_rank()
        if not state.is_world_process_zero:
            return
        step = state.global_step
        staging = self.out / f"{ckpt.STAGING_PREFIX}{step}"
        if not staging.is_dir():
            raise ckpt.CheckpointError(f"the Trainer reported a save at step {step}, but {staging} does not exist")
        path = ckpt.finalize_checkpoint(staging, self.out, step, self.fmt, self._val.get(step))
        self.saved.append(path)
        ckpt.prune(self.out, self.keep_last, ckpt.protected_steps(self.out, self.select_rule))
        if _active_run() is not None:
            from rlmt.tracking import log_outputs

            log_outputs({f"checkpoint.step-{step}": path})
