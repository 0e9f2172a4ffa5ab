"""The run's length-hacking verdict: is the reward's rise over training the answers getting longer?

GRPO and PPO (steps of on-policy rollouts) get :func:`run_verdict`, under :data:`RL_RULE`; DPO (pairs
built once from the initial policy's samples) gets :func:`pair_verdict`, under :data:`DPO_RULE`. The
verdict is saved as ``<run dir>/diagnostics/verdict.json`` and set on the run's MLflow run as the tag
``rlmt.length_verdict`` (its numbers in ``rlmt.length_verdict.detail``, its rule in
``rlmt.length_verdict.rule``) by :func:`record_verdict`; the report shows each cell's verdict with its
rule and :func:`verdict_since`, the step from which the verdict on the steps so far has read as it
does at the end.

Why a within-step slope: a policy that gets better *and* longer over training makes reward and
length rise together, so a line fitted over all rollouts would credit length with the improvement.
Within one step the policy is fixed; how reward moves with answer length there is what the reward
pays for length. That slope times the rise in answer length is the part of the reward's rise that
length alone explains; what is left (the residual reward's rise) is what the policy gained otherwise.

The intervals treat each rollout as one observation (a normal approximation to the difference of two
means). Rollouts of one step share a policy and, in GRPO, a prompt per group, so the intervals are
narrower than an exact account would give: "learning" errs towards firing, "length-hacking" (which
needs the residual interval to reach 0) towards holding back.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rlmt.diagnostics.records import DIAG_DIR, StepRollouts, read_rollouts

MIN_STEPS = 8  # below this there is no early and late quarter of at least two steps each
MIN_PAIRS = 10
EXPLAINED_SHARE_MIN = 0.5
Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile

VERDICT_FILE = f"{DIAG_DIR}/verdict.json"
TAG_VERDICT = "rlmt.length_verdict"
TAG_VERDICT_DETAIL = "rlmt.length_verdict.detail"
TAG_VERDICT_RULE = "rlmt.length_verdict.rule"

RL_RULE = (
    f"Needs at least {MIN_STEPS} steps of rollouts, else 'insufficient data'. Early = the first quarter of the steps, "
    "late = the last quarter (rounded down, at least 2 each). Reward rise = mean reward of the late rollouts minus "
    "that of the early ones, with a 95 % interval (normal approximation, each rollout one observation). Length "
    "effect b = the least-squares slope of reward on answer tokens within steps (each step's own means removed, so "
    "the policy's change over training does not enter it). Residual reward = reward - b x answer tokens; its rise "
    "and interval are computed the same way. Explained share = b x (rise in mean answer tokens) / reward rise. "
    "Verdict: 'flat' when the reward-rise interval does not lie above 0; else 'learning' when the residual-rise "
    f"interval lies above 0; else 'length-hacking' when the explained share is at least {EXPLAINED_SHARE_MIN:g}; "
    "else 'inconclusive'.")

DPO_RULE = (
    f"Over the pairs whose chosen and rejected answers differ in length (at least {MIN_PAIRS}, else 'insufficient "
    "data'): the share whose chosen answer is the longer one, with its 95 % Wilson interval. 'length-biased pairs' "
    "when the interval lies above 0.5 (DPO is taught to write longer), 'shorter-biased pairs' when it lies below "
    "0.5, 'no length bias' otherwise.")


@dataclass(frozen=True)
class Verdict:
    """A run's verdict (`label`), the rule it follows (`rule`: ``rl`` or ``dpo``) and the numbers behind it.

    RL fields (None where undefined or not reached): steps and rollouts used, the early and late
    steps' ranges, reward rise and its interval, rise in mean answer tokens, the within-step slope b
    (reward per answer token), the explained share, the residual rise and its interval. DPO fields:
    pairs that differ in length, the chosen-longer share and its interval.
    """

    label: str
    rule: str
    n_steps: int = 0
    n_rollouts: int = 0
    early_steps: tuple[int, int] | None = None
    late_steps: tuple[int, int] | None = None
    reward_rise: float | None = None
    reward_rise_ci: tuple[float, float] | None = None
    length_rise: float | None = None
    slope: float | None = None
    explained_share: float | None = None
    residual_rise: float | None = None
    residual_rise_ci: tuple[float, float] | None = None
    n_pairs: int = 0
    chosen_longer_share: float | None = None
    chosen_longer_ci: tuple[float, float] | None = None

    @property
    def rule_text(self) -> str:
        return RL_RULE if self.rule == "rl" else DPO_RULE

    def summary(self) -> str:
        """One line: the label and the numbers that decided it."""
        if self.rule == "dpo":
            if self.chosen_longer_share is None:
                return f"{self.label}: {self.n_pairs} pairs differ in answer length (the rule needs {MIN_PAIRS})"
            lo, hi = self.chosen_longer_ci
            return (f"{self.label}: the chosen answer is the longer one in {100 * self.chosen_longer_share:.0f} % of "
                    f"{self.n_pairs} pairs [{100 * lo:.0f}, {100 * hi:.0f}]")
        if self.reward_rise is None:
            return f"{self.label}: {self.n_steps} steps (the rule needs {MIN_STEPS})"
        e, late = self.early_steps, self.late_steps
        share = "n/a" if self.explained_share is None else f"{100 * self.explained_share:.0f} %"
        return (f"{self.label}: reward {self.reward_rise:+.3g} {_ci(self.reward_rise_ci)} from steps {e[0]}-{e[1]} to "
                f"{late[0]}-{late[1]}; answers {self.length_rise:+.1f} tokens; reward per answer token "
                f"{self.slope:.3g} within steps; length explains {share} of the rise; residual reward "
                f"{self.residual_rise:+.3g} {_ci(self.residual_rise_ci)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> "Verdict":
        fields = dict(row)
        for key in ("early_steps", "late_steps", "reward_rise_ci", "residual_rise_ci", "chosen_longer_ci"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)


def _ci(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:+.3g}, {ci[1]:+.3g}]"


# ----------------------------------------------------------------------------- GRPO and PPO: steps of rollouts


def _step_sums(steps: Sequence[StepRollouts], r0: float, l0: float) -> tuple[np.ndarray, np.ndarray]:
    """Per step: [n, sum r, sum r^2, sum L, sum L^2, sum rL] of (r - r0, L - l0), and the within-step
    [sum (r - mean r)(L - mean L), sum (L - mean L)^2]. Shifting by the run's means keeps the sums small."""
    sums = np.zeros((len(steps), 6))
    within = np.zeros((len(steps), 2))
    for i, s in enumerate(steps):
        r = np.asarray(s.reward, dtype=np.float64) - r0
        length = np.asarray(s.answer_tokens, dtype=np.float64) - l0
        sums[i] = [r.size, r.sum(), r @ r, length.sum(), length @ length, r @ length]
        dr, dl = r - r.mean(), length - length.mean()
        within[i] = [dr @ dl, dl @ dl]
    return sums, within


def _group_moments(g: np.ndarray, b: float) -> tuple[float, float, float, float, float]:
    """(n, mean reward, its variance, mean answer tokens, residual variance) of a group's summed rows."""
    n, sr, srr, sl, sll, srl = (float(v) for v in g)
    var_r = max(srr - sr * sr / n, 0.0) / (n - 1) if n > 1 else 0.0
    se, see = sr - b * sl, srr - 2 * b * srl + b * b * sll
    var_e = max(see - se * se / n, 0.0) / (n - 1) if n > 1 else 0.0
    return n, sr / n, var_r, sl / n, var_e


def _verdict_of_prefix(steps: Sequence[StepRollouts], cum: np.ndarray, cum_within: np.ndarray, n_steps: int,
                       r0: float, l0: float) -> Verdict:
    n_rollouts = int(cum[n_steps][0])
    if n_steps < MIN_STEPS:
        return Verdict("insufficient data", "rl", n_steps=n_steps, n_rollouts=n_rollouts)
    k = n_steps // 4
    early, late = cum[k] - cum[0], cum[n_steps] - cum[n_steps - k]
    wxy, wxx = (float(v) for v in cum_within[n_steps])
    b = wxy / wxx if wxx > 0 else 0.0  # no length variation within any step: nothing to attribute
    ne, re, var_re, le, var_ee = _group_moments(early, b)
    nl, rl, var_rl, ll, var_el = _group_moments(late, b)
    rise, length_rise = rl - re, ll - le
    half = Z95 * math.sqrt(var_rl / nl + var_re / ne)
    residual = rise - b * length_rise
    half_res = Z95 * math.sqrt(var_el / nl + var_ee / ne)
    explained = b * length_rise / rise if rise > 0 else None
    if rise - half <= 0:
        label = "flat"
    elif residual - half_res > 0:
        label = "learning"
    elif explained is not None and explained >= EXPLAINED_SHARE_MIN:
        label = "length-hacking"
    else:
        label = "inconclusive"
    return Verdict(label, "rl", n_steps=n_steps, n_rollouts=n_rollouts,
                   early_steps=(steps[0].step, steps[k - 1].step), late_steps=(steps[n_steps - k].step,
                                                                                steps[n_steps - 1].step),
                   reward_rise=rise, reward_rise_ci=(rise - half, rise + half), length_rise=length_rise, slope=b,
                   explained_share=explained, residual_rise=residual,
                   residual_rise_ci=(residual - half_res, residual + half_res))


def _prepared(records: Sequence[StepRollouts]) -> tuple[list[StepRollouts], np.ndarray, np.ndarray, float, float]:
    steps = sorted((s for s in records if len(s)), key=lambda s: s.step)
    if len({s.step for s in steps}) != len(steps):
        raise ValueError("two records of one step: read them with rlmt.diagnostics.read_rollouts (it keeps the last)")
    rewards = [r for s in steps for r in s.reward]
    lengths = [t for s in steps for t in s.answer_tokens]
    r0 = float(np.mean(rewards)) if rewards else 0.0
    l0 = float(np.mean(lengths)) if lengths else 0.0
    sums, within = _step_sums(steps, r0, l0)
    cum = np.vstack([np.zeros((1, 6)), np.cumsum(sums, axis=0)])
    cum_within = np.vstack([np.zeros((1, 2)), np.cumsum(within, axis=0)])
    return steps, cum, cum_within, r0, l0


def run_verdict(records: Sequence[StepRollouts]) -> Verdict:
    """The verdict on a GRPO or PPO run's steps, by :data:`RL_RULE` (steps without rollouts are ignored)."""
    steps, cum, cum_within, r0, l0 = _prepared(records)
    return _verdict_of_prefix(steps, cum, cum_within, len(steps), r0, l0)


def verdict_since(records: Sequence[StepRollouts]) -> int | None:
    """The first step from which the verdict on the steps so far has always read as the final one.

    Each prefix of the run (steps 1..s) gets its own verdict under :data:`RL_RULE`, its slope and
    quarters its own; the answer is the smallest s such that every prefix ending at s or later has the
    final label. None while the final verdict is 'insufficient data'.
    """
    steps, cum, cum_within, r0, l0 = _prepared(records)
    final = _verdict_of_prefix(steps, cum, cum_within, len(steps), r0, l0).label
    if final == "insufficient data":
        return None
    since = len(steps)
    for n in range(len(steps) - 1, MIN_STEPS - 1, -1):
        if _verdict_of_prefix(steps, cum, cum_within, n, r0, l0).label != final:
            break
        since = n
    return steps[since - 1].step


# ----------------------------------------------------------------------------- DPO: pairs


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a share (successes of n)."""
    if n <= 0:
        raise ValueError("a share of nothing has no interval")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def pair_verdict(chosen_answer_tokens: Sequence[int], rejected_answer_tokens: Sequence[int]) -> Verdict:
    """The verdict on DPO's pairs, by :data:`DPO_RULE`."""
    if len(chosen_answer_tokens) != len(rejected_answer_tokens):
        raise ValueError(f"{len(chosen_answer_tokens)} chosen but {len(rejected_answer_tokens)} rejected lengths")
    deltas = [int(c) - int(r) for c, r in zip(chosen_answer_tokens, rejected_answer_tokens)]
    untied = [d for d in deltas if d != 0]
    if len(untied) < MIN_PAIRS:
        return Verdict("insufficient data", "dpo", n_pairs=len(untied))
    longer = sum(d > 0 for d in untied)
    lo, hi = wilson_interval(longer, len(untied))
    label = "length-biased pairs" if lo > 0.5 else "shorter-biased pairs" if hi < 0.5 else "no length bias"
    return Verdict(label, "dpo", n_pairs=len(untied), chosen_longer_share=longer / len(untied),
                   chosen_longer_ci=(lo, hi))


# ----------------------------------------------------------------------------- on disk and in MLflow


def save_verdict(run_dir: str | Path, verdict: Verdict) -> Path:
    path = Path(run_dir) / VERDICT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(verdict.to_dict(), indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def load_verdict(run_dir: str | Path) -> Verdict | None:
    """The verdict saved in `run_dir`, or None (none saved, or unreadable: a warning)."""
    path = Path(run_dir) / VERDICT_FILE
    if not path.is_file():
        return None
    try:
        return Verdict.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as err:
        import logging

        logging.getLogger(__name__).warning("%s unreadable, ignored: %s", path, err)
        return None


def log_verdict(verdict: Verdict) -> None:
    """The verdict as tags of the active MLflow run (and its numbers as ``length.*`` metrics); nothing without one."""
    import mlflow

    if mlflow.active_run() is None:
        return
    from rlmt.tracking import _retry

    _retry(mlflow.set_tags, {TAG_VERDICT: verdict.label, TAG_VERDICT_DETAIL: verdict.summary()[:5000],
                             TAG_VERDICT_RULE: verdict.rule_text})
    numbers = {"length.reward_rise": verdict.reward_rise, "length.answer_tokens_rise": verdict.length_rise,
               "length.reward_per_answer_token": verdict.slope, "length.explained_share": verdict.explained_share,
               "length.residual_rise": verdict.residual_rise, "length.chosen_longer_share": verdict.chosen_longer_share}
    clean = {k: float(v) for k, v in numbers.items() if v is not None and math.isfinite(v)}
    if clean:
        _retry(mlflow.log_metrics, clean)


def record_verdict(run_dir: str | Path, verdict: Verdict) -> Verdict:
    """Save the verdict in `run_dir` and set it on the active MLflow run (the main process calls it)."""
    save_verdict(run_dir, verdict)
    log_verdict(verdict)
    return verdict


def conclude_run(run_dir: str | Path) -> Verdict:
    """The end of a GRPO or PPO run: its verdict from its rollouts file, saved and logged."""
    return record_verdict(run_dir, run_verdict(read_rollouts(run_dir)))
