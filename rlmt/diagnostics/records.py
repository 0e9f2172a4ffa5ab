"""Every step's rollouts on disk: ``<run dir>/diagnostics/rollouts.jsonl``, one line per step.

A line holds one step's rollouts as parallel lists (reward, answer and thought tokens, clipped,
malformed, and the whole output's tokens where known): what the report's reward-against-length
scatter and the run's verdict read. The file is appended to as training goes (the main process
only); a resumed run redoes the steps after its checkpoint and appends them again, so reading keeps
the *last* line of each step. A fresh run (no checkpoint to resume) empties it first
(:meth:`RolloutLog.reset`). A line that cannot be read (a crash cut it short) is skipped and counted,
never fatal.

At the paper's scale a step is 1,024 rollouts, ~20 kB a line: a 500-step run writes ~10 MB.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from rlmt.diagnostics.step import step_diagnostics

log = logging.getLogger(__name__)

DIAG_DIR = "diagnostics"
ROLLOUTS_FILE = f"{DIAG_DIR}/rollouts.jsonl"


@dataclass
class StepRollouts:
    """One step's rollouts (every process's), one entry per rollout in each list."""

    step: int
    reward: list[float]
    answer_tokens: list[int]
    thought_tokens: list[int]
    clipped: list[bool]
    malformed: list[bool]
    completion_tokens: list[int] | None = None
    answer_missing: list[bool] | None = None

    def __post_init__(self):
        n = len(self.reward)
        lengths = {k: len(v) for k, v in asdict(self).items() if isinstance(v, list)}
        if any(v != n for v in lengths.values()):
            raise ValueError(f"step {self.step}: rollout lists of different lengths {lengths}")

    def __len__(self) -> int:
        return len(self.reward)

    def diagnostics(self, kl: float | None = None) -> dict[str, float]:
        """The step's ``diag/*`` metrics (:func:`rlmt.diagnostics.step_diagnostics`)."""
        return step_diagnostics(self.reward, self.answer_tokens, self.thought_tokens, self.clipped, self.malformed,
                                kl, completion_tokens=self.completion_tokens, answer_missing=self.answer_missing)

    def to_json(self) -> str:
        row = {k: v for k, v in asdict(self).items() if v is not None}
        for key in ("clipped", "malformed", "answer_missing"):
            if key in row:
                row[key] = [int(bool(b)) for b in row[key]]
        return json.dumps(row, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> "StepRollouts":
        row = json.loads(line)
        return cls(step=int(row["step"]), reward=[float(r) for r in row["reward"]],
                   answer_tokens=[int(t) for t in row["answer_tokens"]],
                   thought_tokens=[int(t) for t in row["thought_tokens"]],
                   clipped=[bool(b) for b in row["clipped"]], malformed=[bool(b) for b in row["malformed"]],
                   completion_tokens=([int(t) for t in row["completion_tokens"]]
                                      if row.get("completion_tokens") is not None else None),
                   answer_missing=([bool(b) for b in row["answer_missing"]]
                                   if row.get("answer_missing") is not None else None))


class RolloutLog:
    """The rollouts file of the run in `run_dir` (see the module docstring)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ROLLOUTS_FILE

    def reset(self) -> None:
        """Start the file afresh (a run that resumes nothing must not inherit an earlier run's steps)."""
        self.path.unlink(missing_ok=True)

    def append(self, rollouts: StepRollouts) -> None:
        if not len(rollouts):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(rollouts.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def write(self, steps: list[StepRollouts]) -> None:
        """Replace the file with `steps`, atomically (DPO writes its one step at once)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(s.to_json() + "\n" for s in steps if len(s)), encoding="utf-8")
        os.replace(tmp, self.path)

    def read(self) -> tuple[list[StepRollouts], int]:
        """(the steps in step order, the last line of each step winning; how many lines were unreadable)."""
        if not self.path.is_file():
            return [], 0
        by_step: dict[int, StepRollouts] = {}
        bad = 0
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rollouts = StepRollouts.from_json(line)
            except (ValueError, KeyError, TypeError) as err:
                bad += 1
                log.warning("%s line %d skipped: %s", self.path, number, err)
                continue
            by_step[rollouts.step] = rollouts
        return [by_step[s] for s in sorted(by_step)], bad


def read_rollouts(run_dir: str | Path) -> list[StepRollouts]:
    """The run's steps (see :meth:`RolloutLog.read`); empty when it recorded none."""
    return RolloutLog(run_dir).read()[0]
