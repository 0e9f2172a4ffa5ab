"""Length-controlled win rates: how often A beats B at equal answer length, with a bootstrap over prompts.

A judge that prefers longer answers (reward models do) lets a model win by writing more. The
length-controlled (LC) win rate asks what the win rate would be were the two answers equally long.

**The estimator** (:func:`lc_win_rate`; stated in :data:`LC_ESTIMATOR`): the paper's reference-code LC
(:func:`paper_lc_win_rate`, also what :mod:`rlmt.benchmarks.alpacaeval2` reports as the paper's LC) -- a
logistic regression of the paired outcome on an intercept and a length feature, L2 penalty ``1/C`` on the
slope only (scikit-learn's default, ``C = 1``), read off at a length difference of 0:
``LC = 100 * sigmoid(intercept)``. The feature is AlpacaEval 2's normalised length difference,
``tanh(d / sd(d))`` (:func:`normalised_length_difference`), ``d`` the A-minus-B answer length: normalised
so that the fit does not depend on the length unit, bounded so that one very long answer cannot carry it.

* Outcomes are 1 (A wins), 0 (A loses) and 0.5 (tie), the raw win rate's values; a tie enters the
  likelihood as a soft label, ``0.5 log q + 0.5 log(1 - q)`` (half a win, as in the raw rate).
* The penalty is a standard-normal prior on the slope of the bounded feature: at a few dozen prompts it
  pulls LC part of the way back towards the raw rate (it never over-corrects); at hundreds it is
  negligible. ``C = math.inf`` is the unpenalised maximum-likelihood fit (no estimate exists when the
  outcomes are separated by length).
* Closed forms, no fit: outcomes all equal (``y``) give ``100 * y``; a length difference without spread
  (every ``d`` equal, or one prompt) gives the intercept-only fit, ``100 * mean(outcomes)`` -- the raw rate.

**The interval** (:func:`lc_bootstrap_ci`): percentile bootstrap over prompts -- resample the prompts
with replacement (``numpy.random.default_rng(seed).integers(0, n, size=(n_resamples, n))``, 2,000 by
default, seed 0), refit the whole estimator (normalisation included) on each resample, and take the
``alpha/2`` and ``1 - alpha/2`` quantiles (numpy's default, linear). A resample is fitted as its draw
counts (a prompt drawn twice weighs twice), all resamples in one batched Newton iteration: the same fit
as on the drawn rows, without a Python loop per resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

DEFAULT_C = 1.0
N_RESAMPLES = 2000
LC_ESTIMATOR = ("paper's LC: logistic regression of the outcome (1 win, 0.5 tie as a soft label, 0 loss) on an "
                "intercept and tanh(d / sd(d)) (AlpacaEval 2's normalised length difference), L2 penalty 1/C on "
                "the slope only (C = 1), read at d = 0: 100 * sigmoid(intercept); 95 % percentile bootstrap over "
                "prompts (2,000 resamples, the fit redone on each)")


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def _newton(y: np.ndarray, x: np.ndarray, w: np.ndarray, C: float) -> np.ndarray:
    """(intercept, slope) of the penalised logistic fit of each row: ``y``, ``x``, ``w`` are (rows, n) outcomes,
    features and weights (a prompt's weight is how often it is counted). Newton's method with the 2 x 2
    system solved in closed form; a row stops after the step that moved it by less than 1e-10."""
    penalty = 0.0 if math.isinf(C) else 1.0 / C
    beta = np.zeros((y.shape[0], 2))
    active = np.ones(y.shape[0], dtype=bool)
    for _ in range(100):
        b = beta[active]
        ya, xa, wa = y[active], x[active], w[active]
        q = sigmoid(b[:, :1] + b[:, 1:] * xa)
        r, h = wa * (q - ya), wa * q * (1 - q)
        g0, g1 = r.sum(axis=1), (r * xa).sum(axis=1) + penalty * b[:, 1]
        h00, h01, h11 = h.sum(axis=1) + 1e-9, (h * xa).sum(axis=1), (h * xa * xa).sum(axis=1) + penalty
        det = h00 * h11 - h01 * h01
        step = np.column_stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det])
        beta[active] = b - step
        done = np.max(np.abs(step), axis=1) < 1e-10
        active[np.flatnonzero(active)[done]] = False
        if not active.any():
            break
    return beta


def paper_lc_win_rate(wins: Sequence[float], delta_words: Sequence[float], C: float = 1.0) -> dict:
    """The reference code's "LC": logistic regression of the win (1/0, ties 0.5) on an intercept and
    the model-minus-baseline word-count difference (L2 penalty ``1/C`` on the slope only, as
    scikit-learn's default), predicted at a difference of 0: ``100 * sigmoid(intercept)``."""
    y = np.asarray(wins, dtype=float)
    keep = ~np.isnan(y)
    y, d = y[keep], np.asarray(delta_words, dtype=float)[keep]
    if y.size == 0:
        raise ValueError("no judged items for the LC regression")
    (b0, b1), = _newton(y[None, :], d[None, :], np.ones((1, y.size)), C)
    return {"lc_win_rate": 100 * float(sigmoid(b0)), "intercept": float(b0), "slope": float(b1)}


def normalised_length_difference(delta: Sequence[float]) -> np.ndarray:
    """AlpacaEval 2's length feature, ``tanh(d / sd(d))`` (sample sd); zeros when ``d`` has no spread."""
    d = np.asarray(delta, dtype=float)
    sd = float(np.std(d, ddof=1)) if d.size > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


@dataclass
class LCFit:
    """One LC fit: the win rate at equal length (0-100) and the fitted coefficients (on the feature)."""

    value: float
    intercept: float
    slope: float
    n: int


def _checked(outcomes: Sequence[float], length_differences: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_differences, dtype=float)
    if y.shape != d.shape or y.ndim != 1:
        raise ValueError(f"LC needs one length difference per outcome, got {y.shape} and {d.shape}")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(d))):
        raise ValueError("LC outcomes and length differences must be finite numbers (leave unanswered items out)")
    if y.size and (y.min() < 0 or y.max() > 1):
        raise ValueError("LC outcomes must lie in [0, 1] (1 win, 0.5 tie, 0 loss)")
    return y, d


def _fit_counted(y: np.ndarray, d: np.ndarray, counts: np.ndarray, C: float) -> np.ndarray:
    """(value, intercept, slope) per row of ``counts`` (rows, n): the LC fit of the prompts counted that many
    times each (a bootstrap resample is its draw counts; the sample itself is a row of ones).

    The closed forms of the module docstring first; the rest in one batched Newton fit. NaN for a row
    that counts no prompt.
    """
    counts = np.asarray(counts, dtype=float)
    out = np.full((counts.shape[0], 3), math.nan)
    total = counts.sum(axis=1)
    used = counts > 0
    y_min = np.where(used, y, np.inf).min(axis=1)
    y_max = np.where(used, y, -np.inf).max(axis=1)
    mean_y = (counts * y).sum(axis=1) / np.where(total > 0, total, 1)
    mean_d = (counts * d).sum(axis=1) / np.where(total > 0, total, 1)
    var_d = (counts * (d - mean_d[:, None]) ** 2).sum(axis=1) / np.where(total > 1, total - 1, 1)
    sd = np.where(total > 1, np.sqrt(var_d), 0.0)
    with np.errstate(divide="ignore"):
        logit_mean = np.log(mean_y) - np.log1p(-mean_y)

    same = (total > 0) & (y_min == y_max)  # every outcome the same: that outcome
    out[same] = np.column_stack([100 * y_min[same], logit_mean[same], np.zeros(int(same.sum()))])
    flat = (total > 0) & ~same & ~(sd > 0)  # no length spread: the intercept-only fit
    out[flat] = np.column_stack([100 * mean_y[flat], logit_mean[flat], np.zeros(int(flat.sum()))])
    fit = (total > 0) & ~same & (sd > 0)
    if fit.any():
        x = np.tanh(d[None, :] / sd[fit][:, None])
        beta = _newton(np.broadcast_to(y, x.shape), x, counts[fit], C)
        out[fit] = np.column_stack([100 * sigmoid(beta[:, 0]), beta[:, 0], beta[:, 1]])
    return out


def lc_win_rate(outcomes: Sequence[float], length_differences: Sequence[float], C: float = DEFAULT_C) -> LCFit:
    """The LC win rate (0-100) of A over B: ``outcomes`` A's (1, 0.5, 0), ``length_differences`` A minus B.

    NaN when there are no outcomes; see the module docstring for the estimator and its closed forms.
    """
    y, d = _checked(outcomes, length_differences)
    if y.size == 0:
        return LCFit(math.nan, math.nan, math.nan, 0)
    value, intercept, slope = _fit_counted(y, d, np.ones((1, y.size)), C)[0]
    return LCFit(float(value), float(intercept), float(slope), int(y.size))


def _resample_counts(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each of ``n`` prompts is drawn in each resample, 200 resamples at a time: the draws of
    ``default_rng(seed).integers(0, n, (n_resamples, n))`` (drawn in chunks: the same stream)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, 200):
        rows = min(200, n_resamples - start)
        index = rng.integers(0, n, size=(rows, n))
        counts = np.zeros((rows, n))
        np.add.at(counts, (np.repeat(np.arange(rows), n), index.ravel()), 1.0)
        yield counts


def lc_bootstrap_ci(outcomes: Sequence[float], length_differences: Sequence[float], *, n_resamples: int = N_RESAMPLES,
                    seed: int = 0, alpha: float = 0.05, C: float = DEFAULT_C) -> tuple[float, float]:
    """Percentile bootstrap CI (0-100) of :func:`lc_win_rate`, resampling prompts; NaNs when empty."""
    y, d = _checked(outcomes, length_differences)
    if y.size == 0:
        return (math.nan, math.nan)
    values = np.concatenate([_fit_counted(y, d, counts, C)[:, 0] for counts in _resample_counts(y.size, n_resamples, seed)])
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def paired_lc_difference(a_outcomes: Sequence[float], a_lengths: Sequence[float], b_outcomes: Sequence[float],
                         b_lengths: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = 0,
                         alpha: float = 0.05, C: float = DEFAULT_C) -> tuple[float, float, float]:
    """LC of A minus LC of B, two models each judged against its own baseline on the same prompts.

    The four arrays are aligned by prompt; a NaN outcome marks a prompt that side cannot use (an
    unanswered item) and is left out of that side's fit. The CI resamples *prompts* (both sides
    together, so the pairing is kept) and refits both; a resample where a side has no usable prompt
    is skipped. Returns (difference, ci_low, ci_high) in points; NaNs when a side has no usable prompt.
    """
    ya, da = (np.asarray(v, dtype=float) for v in (a_outcomes, a_lengths))
    yb, db = (np.asarray(v, dtype=float) for v in (b_outcomes, b_lengths))
    if not (ya.shape == da.shape == yb.shape == db.shape) or ya.ndim != 1:
        raise ValueError("paired LC needs four arrays aligned by prompt")
    use_a, use_b = ~np.isnan(ya), ~np.isnan(yb)
    if not use_a.any() or not use_b.any():
        return (math.nan, math.nan, math.nan)
    _checked(ya[use_a], da[use_a]), _checked(yb[use_b], db[use_b])
    ya, yb = np.where(use_a, ya, 0.0), np.where(use_b, yb, 0.0)  # weight 0 below: never counted
    ones = np.ones((1, ya.size))
    point = _fit_counted(ya, da, ones * use_a, C)[0, 0] - _fit_counted(yb, db, ones * use_b, C)[0, 0]
    values = np.concatenate([_fit_counted(ya, da, counts * use_a, C)[:, 0] - _fit_counted(yb, db, counts * use_b, C)[:, 0]
                             for counts in _resample_counts(ya.size, n_resamples, seed)])
    values = values[~np.isnan(values)]
    if values.size == 0:
        return (float(point), math.nan, math.nan)
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return (float(point), float(lo), float(hi))
