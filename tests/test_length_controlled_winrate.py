"""The length-controlled (LC) win rate: hand-worked fits, properties, its bootstrap, and the reward win rate's LC.

The estimator (rlmt.stats.length_control): logistic regression of the outcome (1 / 0.5 / 0, a tie a soft
label) on an intercept and x = tanh(d / sd(d)), L2 penalty b1^2 / (2C) on the slope only (C = 1), read
at d = 0: LC = 100 * sigmoid(b0). Expected values below are worked by hand (closed forms, the working in
comments) or by an independent solver written here (scipy's L-BFGS on that objective, not the Newton
iteration under test), compared within the tolerances stated at each assertion.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from rlmt.stats.length_control import (
    LC_ESTIMATOR,
    lc_bootstrap_ci,
    lc_win_rate,
    normalised_length_difference,
    paired_lc_difference,
)


def _independent_lc(y, d, C=1.0) -> float:
    """LC (points) by the stated definition, solved with scipy; the two stated closed forms by hand."""
    y, d = np.asarray(y, float), np.asarray(d, float)
    if y.min() == y.max():
        return 100 * y[0]  # every outcome equal: the fit's limit is that outcome
    sd = np.std(d, ddof=1) if d.size > 1 else 0.0
    if sd == 0:
        return 100 * y.mean()  # no length spread: intercept-only fit, sigmoid(b0) = mean
    x = np.tanh(d / sd)

    penalty = 1 / C if math.isfinite(C) else 0.0

    def objective(b):  # negative log-likelihood (soft labels) + penalty, and its gradient
        z = b[0] + b[1] * x
        nll = np.sum(y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z))
        r = 1 / (1 + np.exp(-z)) - y
        return nll + penalty * b[1] ** 2 / 2, np.array([r.sum(), (r * x).sum() + penalty * b[1]])

    res = minimize(objective, np.zeros(2), jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 5000})
    return 100 / (1 + math.exp(-res.x[0]))


def test_two_length_groups_unpenalised_intercept_in_closed_form():
    # Answers 30 words longer on 20 prompts (18 wins, 2 losses: mean 0.9), 30 words shorter on 4 prompts
    # (two ties, two losses: mean 0.25; a tie is half a win). Two distinct feature values +-t: the
    # unpenalised fit is saturated, so sigmoid(b0 + b1 t) = 0.9 and sigmoid(b0 - b1 t) = 0.25 whatever t is.
    # Adding the logits: 2 b0 = ln 9 + ln(1/3) = ln 3, so LC = 100 sigmoid(ln(3) / 2) = 100 sqrt3 / (1 + sqrt3)
    # = 63.397..., while the raw rate is (18 + 1) / 24 = 79.17.
    y = [1.0] * 18 + [0.0] * 2 + [0.5, 0.5, 0.0, 0.0]
    d = [30] * 20 + [-30] * 4
    fit = lc_win_rate(y, d, C=math.inf)
    assert fit.value == pytest.approx(100 * math.sqrt(3) / (1 + math.sqrt(3)), abs=1e-6)
    assert fit.intercept == pytest.approx(math.log(3) / 2, abs=1e-8)
    assert 100 * sum(y) / len(y) == pytest.approx(79.1667, abs=1e-4)


def test_length_independent_outcomes_give_the_raw_rate_even_penalised():
    # Three prompts 5 words shorter (win, win, loss) and three 5 words longer (loss, win, win), plus one
    # tie at d = 0 (x = 0). At b1 = 0 the slope's score is t (S+ - 3q) - t (S- - 3q) = t (2 - 2) = 0, which
    # is the penalised optimum's condition b1 / C = sum x (y - q) with b1 = 0; the intercept's score
    # sum (y - q) = 0 gives q = mean y = 4.5 / 7. So LC = 100 * 4.5 / 7 = 64.2857 = the raw rate, b0 = ln(4.5 / 2.5).
    y = [1, 1, 0, 0, 1, 1, 0.5]
    d = [-5, -5, -5, 5, 5, 5, 0]
    fit = lc_win_rate(y, d)
    assert fit.value == pytest.approx(100 * 4.5 / 7, abs=1e-8)
    assert fit.slope == pytest.approx(0.0, abs=1e-9) and fit.intercept == pytest.approx(math.log(1.8), abs=1e-9)


def test_closed_forms_without_a_fit():
    assert lc_win_rate([1, 1, 1], [3, -40, 7]).value == 100.0  # every outcome a win
    assert lc_win_rate([0.5, 0.5], [10, -10]).value == 50.0  # every outcome a tie
    assert lc_win_rate([1, 0, 1, 1], [6, 6, 6, 6]).value == 75.0  # no length spread: the raw rate
    assert lc_win_rate([0.0], [12]).value == 0.0
    empty = lc_win_rate([], [])
    assert math.isnan(empty.value) and empty.n == 0
    assert lc_bootstrap_ci([1, 1], [2, 5]) == (100.0, 100.0)
    assert all(math.isnan(v) for v in lc_bootstrap_ci([], []))
    for bad_y, bad_d in (([1, 2], [0, 1]), ([1, float("nan")], [0, 1]), ([1, 0], [0])):
        with pytest.raises(ValueError):
            lc_win_rate(bad_y, bad_d)


def test_the_normalised_feature_is_tanh_of_d_over_its_sample_sd():
    # d = [-2, 0, 2]: sample sd = sqrt((4 + 0 + 4) / 2) = 2, so x = tanh([-1, 0, 1])
    assert normalised_length_difference([-2, 0, 2]) == pytest.approx(np.tanh([-1.0, 0.0, 1.0]), abs=1e-12)
    assert list(normalised_length_difference([4, 4])) == [0.0, 0.0]
    assert "tanh(d / sd(d))" in LC_ESTIMATOR and "soft label" in LC_ESTIMATOR


@pytest.mark.parametrize("seed", range(4))
def test_penalised_fit_matches_an_independent_solver(seed):
    rng = np.random.default_rng(seed)
    n = 40
    d = rng.normal(20, 60, size=n).round()
    y = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.1, 0.6])
    y[d > 80] = 1.0  # some dependence on length, not separable
    for C in (1.0, 10.0):
        # tolerance 1e-5 points: both solvers stop within ~1e-8 of the optimum's coefficients
        assert lc_win_rate(y, d, C=C).value == pytest.approx(_independent_lc(y, d, C), abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_outcomes_independent_of_length_give_lc_near_raw(seed):
    # 5,000 prompts, the policy mostly longer (d skewed positive: 83 % of prompts), outcomes drawn
    # independently of d. Tolerance 3 points: over 40 seeds of this design LC - raw has sd 0.84 points
    # (a noise slope moves the intercept, the feature's mean being ~0.4), so 3 points is ~3.5 sd.
    rng = np.random.default_rng(100 + seed)
    d = rng.gamma(2.0, 40.0, size=5000) - 30
    y = rng.choice([0.0, 0.5, 1.0], size=5000, p=[0.25, 0.1, 0.65])
    raw = 100 * y.mean()
    assert lc_win_rate(y, d).value == pytest.approx(raw, abs=3.0)


@pytest.mark.parametrize("seed", range(3))
def test_outcomes_explained_by_length_give_lc_near_50(seed):
    # The same skewed lengths; the outcome depends on length only: P(win) = sigmoid(4 x), x the feature,
    # so at equal length a win is a coin flip (true LC 50) while the raw rate is far above it.
    # Tolerance 4 points: over 40 seeds of this design at 5,000 prompts LC - 50 has mean 0.3 and sd 1.1.
    rng = np.random.default_rng(200 + seed)
    d = rng.gamma(2.0, 40.0, size=5000) - 30
    x = np.tanh(d / np.std(d, ddof=1))
    y = (rng.random(5000) < 1 / (1 + np.exp(-4 * x))).astype(float)
    assert 100 * y.mean() > 65
    assert lc_win_rate(y, d).value == pytest.approx(50.0, abs=4.0)
    # deterministic: every longer answer wins, every shorter loses, equal lengths tie
    sign = np.sign(np.round(d))
    assert lc_win_rate((sign + 1) / 2, np.round(d)).value == pytest.approx(50.0, abs=4.0)


def test_bootstrap_is_a_seeded_percentile_interval_over_prompts():
    # Reconstructed independently: resample prompts with default_rng(seed).integers(0, n, (R, n)), refit
    # each with the independent solver, take the 2.5 / 97.5 % quantiles. Tolerance 1e-4 points.
    rng = np.random.default_rng(7)
    d = rng.integers(-40, 60, size=12).astype(float)
    y = rng.choice([0.0, 0.5, 1.0], size=12, p=[0.35, 0.15, 0.5])
    lo, hi = lc_bootstrap_ci(y, d, n_resamples=200, seed=3)
    idx = np.random.default_rng(3).integers(0, 12, size=(200, 12))
    values = [_independent_lc(y[i], d[i]) for i in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-4)
    assert lc_bootstrap_ci(y, d, n_resamples=200, seed=3) == (lo, hi)  # seeded
    assert lo <= lc_win_rate(y, d).value <= hi


def test_paired_lc_difference_keeps_the_pairing():
    rng = np.random.default_rng(11)
    d = rng.integers(-30, 30, size=15).astype(float)
    y = rng.choice([0.0, 0.5, 1.0], size=15)
    # the same model on both sides: every resample's difference is 0
    assert paired_lc_difference(y, d, y, d, n_resamples=200) == (0.0, 0.0, 0.0)
    y2 = rng.choice([0.0, 1.0], size=15)
    y2[[2, 5]] = np.nan  # prompts the second model did not answer: left out of its fit only
    delta, lo, hi = paired_lc_difference(y, d, y2, -d, n_resamples=200)
    keep = ~np.isnan(y2)
    assert delta == pytest.approx(_independent_lc(y, d) - _independent_lc(y2[keep], -d[keep]), abs=1e-4)
    # swapping the sides negates the difference and mirrors the interval (same resamples)
    back = paired_lc_difference(y2, -d, y, d, n_resamples=200)
    assert back == pytest.approx((-delta, -hi, -lo), abs=1e-9)


# ---------------------------------------------------------------------- the reward win rate's LC


def _table_reward(rewards: dict[str, float]):
    """A reward kind whose score of an answer is read from a table (a stand-in for a reward model)."""
    from rlmt.rewards.base import AnswerReward, Scored
    from rlmt.thinking import WARM_NOTHINK

    class TableReward(AnswerReward):
        kind = "table"

        def score_answers(self, items, *, progress=False):
            return Scored([rewards[item.answer] for item in items])

    return TableReward(WARM_NOTHINK)


def test_reward_winrate_reports_lc_beside_the_raw_rate():
    from rlmt.benchmarks import get_benchmark
    from rlmt.benchmarks.base import Item

    def words(tag: str, n: int) -> str:
        return " ".join([tag] * n)

    items = [Item(f"p{k}", [{"role": "user", "content": f"question {k}"}], {}) for k in range(8)]
    ref = {f"p{k}": words(f"r{k}", 10) for k in range(8)}
    # policy answers 5 words shorter on p0-p2 (win, win, loss), 5 longer on p3-p5 (loss, win, win), the
    # reference's own answer on p6 (tie by construction), and an answer on p7 where the reference has none
    pol = {f"p{k}": words(f"a{k}", 5 if k < 3 else 15) for k in range(6)}
    pol["p6"], pol["p7"] = ref["p6"], words("a7", 3)
    wins = {"p0": True, "p1": True, "p2": False, "p3": False, "p4": True, "p5": True}
    rewards = {ref[k]: 0.0 for k in ref}
    rewards.update({pol[k]: (1.0 if w else -1.0) for k, w in wins.items()})
    rewards[pol["p7"]] = 0.3
    gens = {k: {"id": k, "answer": a, "answer_found": True} for k, a in pol.items()}
    ref_gens = {k: {"id": k, "answer": a, "answer_found": True} for k, a in ref.items()}
    ref_gens["p7"] = {"id": "p7", "answer": "", "answer_found": False}
    result = get_benchmark("reward-winrate", mixture_dir="unused").score(
        items, gens, reference_generations=ref_gens, scorer=_table_reward(rewards), seed=0)

    # win_rate over all 8: (1 + 1 + 0 + 0 + 1 + 1 + 0.5 + 1) / 8 = 68.75; both answered (p0-p6): 4.5 / 7
    assert result.metrics["win_rate"].value == pytest.approx(68.75, abs=1e-9)
    assert result.metrics["win_rate_both_answered"].value == pytest.approx(100 * 4.5 / 7, abs=1e-9)
    # LC over p0-p6: d = -5, -5, -5, +5, +5, +5, 0 words with outcomes 1, 1, 0, 0, 1, 1, 0.5 -- the design of
    # test_length_independent_outcomes_give_the_raw_rate_even_penalised: LC = 100 * 4.5 / 7 exactly
    lc = result.metrics["lc_win_rate"]
    assert lc.value == pytest.approx(100 * 4.5 / 7, abs=1e-8) and lc.n == 7
    assert lc.ci_low <= lc.value <= lc.ci_high
    assert result.metric_version == "5"
    assert result.extra["lc"]["items"] == "both answered" and result.extra["lc"]["estimator"] == LC_ESTIMATOR
    assert result.extra["lc"]["mean_word_difference"] == pytest.approx(0.0, abs=1e-12)
    by_id = {s.id: s.details for s in result.per_item}
    assert (by_id["p0"]["policy_words"], by_id["p0"]["reference_words"]) == (5, 10)
    assert (by_id["p7"]["policy_words"], by_id["p7"]["reference_words"]) == (3, None)
    assert by_id["p6"]["policy_answer_digest"] != by_id["p5"]["policy_answer_digest"]
    assert len(by_id["p6"]["policy_answer_digest"]) == 16

    # every both-answered item a win: LC is 100 (the fit's limit), and the infinite intercept is written as null
    # (scores.json stays strict JSON)
    rewards.update({pol[k]: 1.0 for k in wins})
    ref_gens["p6"] = {"id": "p6", "answer": "", "answer_found": False}
    won = get_benchmark("reward-winrate", mixture_dir="unused").score(
        items, gens, reference_generations=ref_gens, scorer=_table_reward(rewards), seed=0)
    assert won.metrics["lc_win_rate"].value == 100.0 and won.metrics["lc_win_rate"].n == 6
    assert won.extra["lc"]["intercept"] is None
