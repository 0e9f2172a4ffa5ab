"""Bradley-Terry scores of a model against a baseline, raw and style-controlled (ArenaHard v2).

A *battle* is one judge game: the candidate's outcome ``y`` (1 win, 0.5 tie, 0 loss), a weight
(the official scale counts a decisive verdict ``>>`` three times) and the style difference
between the two answers. With one candidate and one baseline, Bradley-Terry reduces to a
logistic model of the candidate's win probability:

    P(candidate wins) = sigmoid(beta + gamma . s)

* raw score: no style term -> ``sigmoid(beta)`` = the weighted share of wins (ties count half);
* style control: ``s`` holds standardised differences in answer length and markdown density
  (headers, list items, bold spans), so ``gamma`` absorbs a judge's taste for long, heavily
  formatted answers; the controlled score is ``sigmoid(beta)``, the win rate at equal style.

Differences are relative, ``(cand - base) / (cand + base)`` (0 when both are 0), then
standardised over the battles. CIs are percentile bootstraps that resample *items* (both games of
an item move together, since they share the two answers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

STYLE_FEATURES = ("length", "headers", "lists", "bold")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.M)
_LIST = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+\S", re.M)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def style_counts(text: str) -> np.ndarray:
    """[words, markdown headers, list items, bold spans] of one answer."""
    return np.array([len(text.split()), len(_HEADER.findall(text)), len(_LIST.findall(text)),
                     len(_BOLD.findall(text))], dtype=float)


def style_difference(candidate: str, baseline: str) -> np.ndarray:
    a, b = style_counts(candidate), style_counts(baseline)
    total = a + b
    return np.divide(a - b, total, out=np.zeros_like(a), where=total > 0)


@dataclass
class Battle:
    item: str
    outcome: float  # candidate's: 1 win, 0.5 tie, 0 loss
    weight: float
    style: np.ndarray  # candidate-minus-baseline relative differences


def fit_logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Weighted logistic regression with soft labels (Newton's method, a tiny ridge for stability)."""
    beta = np.zeros(X.shape[1])
    for _ in range(100):
        z = X @ beta
        q = np.exp(-np.logaddexp(0.0, -z))
        grad = X.T @ (w * (q - y)) + ridge * beta
        hess = (X * (w * q * (1 - q))[:, None]).T @ X + ridge * np.eye(X.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


def bt_win_rate(battles: Sequence[Battle], style_control: bool) -> tuple[float, np.ndarray]:
    """The candidate's Bradley-Terry win rate against the baseline (0-1) and the fitted coefficients."""
    if not battles:
        return float("nan"), np.zeros(0)
    y = np.array([b.outcome for b in battles])
    w = np.array([b.weight for b in battles])
    X = np.ones((len(battles), 1))
    if style_control:
        S = np.vstack([b.style for b in battles])
        sd = S.std(axis=0)
        S = np.where(sd > 0, (S - S.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
        X = np.hstack([X, S[:, sd > 0]])
    beta = fit_logistic(X, y, w)
    return float(np.exp(-np.logaddexp(0.0, -beta[0]))), beta


def bt_with_ci(battles: Sequence[Battle], style_control: bool, n_resamples: int = 200, seed: int = 0,
               alpha: float = 0.05) -> tuple[float, float, float]:
    """(win rate, CI low, CI high), all in 0-1, by an item-level bootstrap."""
    value, _ = bt_win_rate(battles, style_control)
    by_item: dict[str, list[Battle]] = {}
    for b in battles:
        by_item.setdefault(b.item, []).append(b)
    keys = list(by_item)
    if len(keys) < 2:
        return value, value, value
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        picked = [b for k in rng.choice(len(keys), len(keys)) for b in by_item[keys[k]]]
        stats.append(bt_win_rate(picked, style_control)[0])
    lo, hi = np.nanquantile(stats, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)
