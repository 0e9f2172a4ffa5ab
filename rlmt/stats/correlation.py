"""Correlation and the least-squares line of two number lists (reward against answer length).

Used by the length-debiased reward's calibration (:mod:`rlmt.rewards.calibration`) and by a trained
reward model's held-out report (``rm_eval.json``). A correlation is undefined when either list is
constant; it is then ``None``, never NaN (NaN is not JSON and compares false with everything).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _arrays(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise ValueError(f"two lists of different lengths: {len(x)} and {len(y)}")
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("a value is NaN or infinite")
    return xa, ya


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r; None with fewer than 2 points or a constant list."""
    xa, ya = _arrays(x, y)
    if len(xa) < 2:
        return None
    dx, dy = xa - xa.mean(), ya - ya.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return None
    return float(np.clip((dx @ dy) / np.sqrt(sxx * syy), -1.0, 1.0))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho: Pearson's r of the ranks, tied values sharing their mean rank."""
    from scipy.stats import rankdata

    xa, ya = _arrays(x, y)
    if len(xa) < 2:
        return None
    return pearson(rankdata(xa), rankdata(ya))


def least_squares_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(slope, intercept) of the ordinary least-squares line y ~ slope * x + intercept.

    slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2); a constant x has no slope: an error.
    """
    xa, ya = _arrays(x, y)
    if len(xa) < 2:
        raise ValueError(f"a line needs at least 2 points, got {len(xa)}")
    dx = xa - xa.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError(f"every x is {xa[0]:g}: the slope is undefined")
    slope = float(dx @ (ya - ya.mean())) / sxx
    return slope, float(ya.mean() - slope * xa.mean())
