"""Length-controlled win rates for AlpacaEval 2.

Two estimators, because the paper's numbers and the leaderboard's come from different ones:

* :func:`official_lc_win_rate` -- the published AlpacaEval 2 length-controlled GLM (Dubois et al.,
  2024), implemented here from its description: a logistic model of the probability that the
  model beats the baseline on instruction *i* with three features, no intercept:

      p_i = sigmoid( theta_len * tanh(dlen_i / sd(dlen)) + theta_diff * difficulty_i + theta_m )

  where ``dlen`` is the baseline's minus the model's answer length in characters, ``difficulty``
  is the per-instruction difficulty table and ``theta_m`` the model's strength (a "not a gamed
  baseline" indicator). The fit is regularised towards two *gamed* baselines (verbose and concise
  prompts of the baseline model; ``df_gamed.csv``) whose rows enter with weight lambda/2; it uses an
  L1 penalty whose strength is picked by 5-fold grouped cross-validation on the log loss with soft
  labels (ties are 0.5). The LC win rate is the mean predicted p_i with the length term set to 0.
  Both tables are read from files (the official package downloads them; ``rlmt data
  fetch-benchmarks`` does it on a networked machine; tests point at fixture tables).
* :func:`paper_lc_win_rate` -- what the reference code called LC: a logistic regression of the
  win on the word-length difference, read off at a difference of 0. It lives in
  :mod:`rlmt.stats.length_control` (re-exported here), where the reward win rate and the report use it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from rlmt.stats.length_control import paper_lc_win_rate  # noqa: F401  (re-exported)

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 10))
FEATURES = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")


class LengthControlError(ValueError):
    """Inputs the GLM cannot use (missing tables, unknown instruction indices, empty data)."""


@dataclass
class GamedTable:
    """``df_gamed.csv``: featurised annotations of the gamed baselines, plus each instruction's difficulty."""

    std_delta_len: np.ndarray
    instruction_difficulty: np.ndarray
    preference: np.ndarray  # in [0, 1], probability that the gamed model wins
    difficulty_by_index: dict[int, float]


def read_gamed_table(path: str | Path) -> GamedTable:
    """Read ``df_gamed.csv`` (columns index, preference, std_delta_len, instruction_difficulty, ...)."""
    import csv

    path = Path(path)
    if not path.exists():
        raise LengthControlError(f"{path} not found: the official LC GLM needs AlpacaEval's df_gamed.csv "
                                 "(`rlmt data fetch-benchmarks` downloads it on a networked machine)")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    need = {"index", "preference", "std_delta_len", "instruction_difficulty"}
    if not rows or not need <= set(rows[0]):
        raise LengthControlError(f"{path}: expected columns {sorted(need)}, found {sorted(rows[0]) if rows else []}")

    def num(v: str) -> float:
        return float(v) if v not in ("", "nan", "NaN") else math.nan

    difficulty: dict[int, float] = {}
    for r in rows:  # the first row of each instruction defines its difficulty
        difficulty.setdefault(int(float(r["index"])), num(r["instruction_difficulty"]))
    return GamedTable(np.array([num(r["std_delta_len"]) for r in rows]),
                      np.array([num(r["instruction_difficulty"]) for r in rows]),
                      np.array([num(r["preference"]) for r in rows]), difficulty)


# ---------------------------------------------------------------------- L1 logistic regression, soft labels


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def fit_l1_logistic(X: np.ndarray, p: np.ndarray, weight: np.ndarray, C: float,
                    w0: np.ndarray | None = None) -> np.ndarray:
    """argmin_w ||w||_1 + C * sum_i weight_i * CE(p_i, sigmoid(x_i . w)), no intercept.

    The soft label ``p`` is the cross-entropy target (ties 0.5). Solved exactly as a smooth
    bound-constrained problem in (u, v) with w = u - v, u, v >= 0 (L-BFGS-B).
    """
    from scipy.optimize import minimize

    d = X.shape[1]

    def objective(uv: np.ndarray):
        w = uv[:d] - uv[d:]
        z = X @ w
        loss = weight * (np.logaddexp(0.0, z) - p * z)
        grad_w = C * X.T @ (weight * (_sigmoid(z) - p))
        f = uv.sum() + C * loss.sum()
        return f, np.concatenate([grad_w + 1.0, -grad_w + 1.0])

    start = np.zeros(2 * d) if w0 is None else np.concatenate([np.maximum(w0, 0), np.maximum(-w0, 0)])
    res = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * d),
                   options={"maxiter": 2000, "ftol": 1e-11, "gtol": 1e-8})
    return res.x[:d] - res.x[d:]


def _soft_log_loss(X: np.ndarray, p: np.ndarray, weight: np.ndarray, w: np.ndarray) -> float:
    q = np.clip(_sigmoid(X @ w), 1e-15, 1 - 1e-15)
    return float(-np.mean(weight * (p * np.log(q) + (1 - p) * np.log(1 - q))))


def fit_l1_logistic_cv(X: np.ndarray, p: np.ndarray, weight: np.ndarray, n_splits: int = 5,
                       Cs: Sequence[float] = DEFAULT_CS) -> tuple[np.ndarray, float]:
    """Pick C by grouped k-fold CV on the weighted soft log loss, then refit on all rows.

    Each row is its own group; rows go to folds round-robin from the last row backwards (the
    assignment a size-balanced grouped k-fold gives equal-size groups).
    """
    n = X.shape[0]
    if n < n_splits:
        raise LengthControlError(f"need at least {n_splits} annotated rows for the GLM, got {n}")
    fold = (n - 1 - np.arange(n)) % n_splits
    totals = np.zeros(len(Cs))
    for k in range(n_splits):
        train, test = fold != k, fold == k
        for j, C in enumerate(Cs):
            w = fit_l1_logistic(X[train], p[train], weight[train], C)
            totals[j] -= _soft_log_loss(X[test], p[test], weight[test], w)
    best = float(Cs[int(np.argmax(totals))])
    return fit_l1_logistic(X, p, weight, best), best


# ---------------------------------------------------------------------- the two LC estimators


def official_lc_win_rate(preference: Sequence[float], len_model: Sequence[int], len_baseline: Sequence[int],
                         instruction_index: Sequence[int], gamed: GamedTable, *,
                         regularize_to_baseline_lambda: float | None = 0.2, n_splits: int = 5) -> dict:
    """The AlpacaEval 2 LC win rate (0-100) of one model against the baseline.

    ``preference`` is the probability that the *model* won each instruction (1 win, 0 loss,
    0.5 tie, NaN when the judgment failed: such rows are left out of the fit but, as in the
    official package, still predicted).
    """
    pref = np.asarray(preference, dtype=float)
    if pref.size == 0:
        raise LengthControlError("no annotations to fit the LC GLM on")
    dlen = np.asarray(len_baseline, dtype=float) - np.asarray(len_model, dtype=float)
    sd = float(np.std(dlen, ddof=1)) if dlen.size > 1 else 0.0
    std_dlen = dlen / sd if sd > 0 else np.zeros_like(dlen)
    missing = [int(i) for i in instruction_index if int(i) not in gamed.difficulty_by_index]
    if missing:
        raise LengthControlError(f"instruction indices {missing[:5]} have no difficulty in df_gamed.csv")
    difficulty = np.array([gamed.difficulty_by_index[int(i)] for i in instruction_index])

    X_model = np.column_stack([np.tanh(std_dlen), difficulty, np.ones_like(difficulty)])
    keep = ~np.isnan(pref)
    X, p, w = X_model[keep], pref[keep], np.ones(int(keep.sum()))
    if regularize_to_baseline_lambda:
        X_g = np.column_stack([np.tanh(gamed.std_delta_len), gamed.instruction_difficulty,
                               np.zeros_like(gamed.std_delta_len)])
        keep_g = ~np.isnan(gamed.preference)
        X = np.vstack([X_g[keep_g], X])
        p = np.concatenate([gamed.preference[keep_g], p])
        w = np.concatenate([np.full(int(keep_g.sum()), regularize_to_baseline_lambda / 2), w])
    coef, C = fit_l1_logistic_cv(X, p, w, n_splits=n_splits)
    X_test = np.column_stack([np.zeros_like(difficulty), difficulty, np.ones_like(difficulty)])
    predicted = _sigmoid(X_test @ coef)
    sem = float(np.std(predicted, ddof=1) / math.sqrt(predicted.size)) if predicted.size > 1 else 0.0
    return {"lc_win_rate": 100 * float(predicted.mean()), "lc_standard_error": 100 * sem,
            "weights": dict(zip(FEATURES, map(float, coef))), "C": C, "predicted": predicted}
