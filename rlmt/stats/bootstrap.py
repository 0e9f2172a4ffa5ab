"""The percentile bootstrap of a mean: every benchmark's CI and the report's head-to-head win rates.

Seeded (``numpy.random.default_rng(seed)``), so a rerun reports the same interval; resamples are
drawn as ``rng.integers(0, n, size=(k, n))`` in chunks of 200 rows, and the interval is the
``alpha/2`` and ``1 - alpha/2`` quantiles (numpy's default, linear) of the resampled means.
Moved here from ``rlmt.benchmarks.base`` (which re-exports it) so the report can use it too.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], n_resamples: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean. Seeded, so a rerun reports the same interval."""
    vals = np.asarray([float(v) for v in values], dtype=float)
    if vals.size == 0:
        return (math.nan, math.nan)
    if vals.min() == vals.max():
        return (float(vals[0]), float(vals[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 200):  # chunks keep memory flat for 5,700-item benchmarks
        stop = min(start + 200, n_resamples)
        means[start:stop] = vals[rng.integers(0, vals.size, size=(stop - start, vals.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))
