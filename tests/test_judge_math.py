"""Scoring math against hand-computed numbers: the LC GLMs, Bradley-Terry with style features,
bootstrap CIs, WildBench rewards with the length penalty, the Creative Writing rubric, parsers.
And our official LC GLM against alpaca_eval's own get_length_controlled_winrate."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import missing_component

from rlmt.benchmarks.length_control import (fit_l1_logistic, official_lc_win_rate, paper_lc_win_rate,
                                            read_gamed_table)
from rlmt.benchmarks import arena_style
from rlmt.benchmarks.arena_style import Pair, Rows
from rlmt.judges import parsing

FIX = Path(__file__).parent / "fixtures" / "judged"
ROOT = Path(__file__).resolve().parents[1]


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


# ------------------------------------------------------------------ length control


def test_paper_lc_reads_the_win_rate_off_at_equal_length():
    # 10 items 1 word longer than the baseline (8 wins), 10 items 1 word shorter (4 wins).
    wins = [1] * 8 + [0] * 2 + [1] * 4 + [0] * 6
    delta = [1] * 10 + [-1] * 10
    lc = paper_lc_win_rate(wins, delta, C=1e9)  # unpenalised: the closed-form MLE
    assert lc["lc_win_rate"] == pytest.approx(100 * sigmoid((logit(0.8) + logit(0.4)) / 2), abs=1e-6)  # 62.02
    assert lc["slope"] == pytest.approx((logit(0.8) - logit(0.4)) / 2, abs=1e-6)
    # a strong slope penalty removes the length effect: LC = raw win rate
    assert paper_lc_win_rate(wins, delta, C=1e-9)["lc_win_rate"] == pytest.approx(60.0, abs=1e-4)


def test_l1_logistic_matches_closed_forms():
    X = np.ones((4, 1))
    p = np.array([1.0, 1.0, 1.0, 0.0])  # 3 of 4: unpenalised optimum logit(0.75)
    w = fit_l1_logistic(X, p, np.ones(4), C=1e8)
    assert w[0] == pytest.approx(logit(0.75), abs=1e-4)
    # with weight C, the L1 optimum satisfies C * sum(q - p) = -1, i.e. q = (3 - 1/C) / 4
    w = fit_l1_logistic(X, p, np.ones(4), C=2.0)
    assert sigmoid(w[0]) == pytest.approx((3 - 0.5) / 4, abs=1e-5)
    assert fit_l1_logistic(X, p, np.ones(4), C=1e-3)[0] == pytest.approx(0.0, abs=1e-8)  # fully shrunk


def test_official_lc_equals_win_rate_when_lengths_and_difficulty_carry_nothing(tmp_path):
    (tmp_path / "df_gamed.csv").write_text("index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline,model\n"
                                           + "".join(f"{i},0.5,0.0,0.0,False,g\n" for i in range(100)))
    gamed = read_gamed_table(tmp_path / "df_gamed.csv")
    prefs = [1.0] * 70 + [0.0] * 30
    res = official_lc_win_rate(prefs, [100] * 100, [100] * 100, list(range(100)), gamed,
                               regularize_to_baseline_lambda=None)
    # only the model's strength is identified: sigmoid(theta) ~ 0.70, up to a small L1 shrinkage
    assert res["lc_win_rate"] == pytest.approx(70.0, abs=0.6)
    assert res["weights"]["np.tanh(std_delta_len)"] == 0.0


def test_official_lc_reads_the_model_strength_off_at_equal_length(tmp_path):
    (tmp_path / "df_gamed.csv").write_text("index,preference,std_delta_len,instruction_difficulty,not_gamed_baseline,model\n"
                                           + "".join(f"{i},0.5,0.0,0.0,False,g\n" for i in range(120)))
    gamed = read_gamed_table(tmp_path / "df_gamed.csv")
    # 60 answers 1000 chars longer than the baseline win 54 times, 60 answers 1000 shorter win 12 times.
    lm = [3000] * 60 + [1000] * 60
    pref = [1.0] * 54 + [0.0] * 6 + [1.0] * 12 + [0.0] * 48
    res = official_lc_win_rate(pref, lm, [2000] * 120, list(range(120)), gamed, regularize_to_baseline_lambda=None)
    # dlen = -+1000, sd ~ 1004: tanh features are +-t, so theta_m = (logit .9 + logit .2) / 2 exactly
    assert 100 * sum(pref) / 120 == pytest.approx(55.0)
    assert res["lc_win_rate"] == pytest.approx(100 * sigmoid((logit(0.9) + logit(0.2)) / 2), abs=0.6)  # 60.0
    assert res["weights"]["np.tanh(std_delta_len)"] < 0  # longer than the baseline (negative dlen) helps


ALPACA_EVAL_SCRIPT = textwrap.dedent("""
    import json, sys
    import pandas as pd
    from alpaca_eval.metrics import glm_winrate
    fixtures = sys.argv[1]
    # replace the download (never the math): the two tables come from the fixture directory
    glm_winrate.hf_hub_download = lambda repo_id, filename, **kw: f"{fixtures}/{filename}"
    df = pd.DataFrame(json.load(sys.stdin))
    m = glm_winrate.get_length_controlled_winrate(df, save_weights_dir=None, is_warn_extreme_changes=False)
    print(json.dumps({"win_rate": float(m["win_rate"]), "lc": float(m["length_controlled_winrate"])}))
""")


def _alpaca_eval_env() -> dict | None:
    """Env in which `import alpaca_eval` works: installed, or in $RLMT_ALPACA_EVAL_PATH (a --target dir)."""
    env = dict(os.environ)
    extra = os.environ.get("RLMT_ALPACA_EVAL_PATH")
    if extra:
        env["PYTHONPATH"] = os.pathsep.join([extra, env.get("PYTHONPATH", "")])
    probe = subprocess.run([sys.executable, "-c", "import alpaca_eval.metrics.glm_winrate"], env=env,
                           capture_output=True, timeout=120)
    return env if probe.returncode == 0 else None


@pytest.mark.slow
def test_official_lc_matches_alpaca_eval_package():
    env = _alpaca_eval_env()
    if env is None:
        missing_component("alpaca_eval 0.6.6 is not importable (it needs pkg_resources, i.e. setuptools<81, which our "
                    "pins exclude); install it with `pip install --no-deps --target DIR alpaca-eval==0.6.6 patsy fire "
                    "termcolor jiter distro sniffio tiktoken openai setuptools==80.9.0` and set "
                    "RLMT_ALPACA_EVAL_PATH=DIR")
    rng = random.Random(7)
    annotations, prefs = [], []
    for i in range(110):
        lm, lb = rng.randint(200, 3000), rng.randint(800, 2000)
        p_win = sigmoid(0.0009 * (lm - lb) + 0.3)
        pref = 0 if rng.random() < 0.05 else (2 if rng.random() < p_win else 1)  # 0 = tie
        annotations.append({"index": i, "output_1": "b" * lb, "output_2": "m" * lm, "preference": pref,
                            "generator_1": "gpt4_1106_preview", "generator_2": "my-model", "annotator": "judge"})
        prefs.append({1: 0.0, 2: 1.0, 0: 0.5}[pref])
    out = subprocess.run([sys.executable, "-c", ALPACA_EVAL_SCRIPT, str(FIX / "alpacaeval2")], env=env,
                         input=json.dumps(annotations), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    ours = official_lc_win_rate(prefs, [len(a["output_2"]) for a in annotations],
                                [len(a["output_1"]) for a in annotations], [a["index"] for a in annotations],
                                read_gamed_table(FIX / "alpacaeval2" / "df_gamed.csv"))
    assert theirs["win_rate"] == pytest.approx(100 * sum(prefs) / len(prefs))
    assert abs(ours["lc_win_rate"] - theirs["lc"]) < 0.5, (ours["lc_win_rate"], theirs["lc"])


# ------------------------------------------------------------------ Bradley-Terry with style features


NO_STYLE = dict.fromkeys(arena_style.STYLE_KEYS, 0)


def _rows(models, outcomes, features=None) -> Rows:
    features = np.zeros((len(outcomes), 4)) if features is None else np.asarray(features, dtype=float)
    return Rows(list(models), [str(i) for i in range(len(outcomes))], np.asarray(outcomes, dtype=float), features)


def test_pair_rows_weight_decisive_verdicts_and_drop_broken_pairs():
    # game 2 (model as A) first: A>>B -> three wins; game 1 (baseline as A): A>B -> one loss
    assert arena_style.pair_rows(Pair("m", "u", "A>B", "A>>B", NO_STYLE, NO_STYLE)) == [1.0, 1.0, 1.0, 0.0]
    assert arena_style.pair_rows(Pair("m", "u", "B<<A", "B=A", NO_STYLE, NO_STYLE)) == [0.5, 0.0, 0.0, 0.0]
    assert arena_style.pair_rows(Pair("m", "u", None, "A>B", NO_STYLE, NO_STYLE)) is None
    rows, dropped = arena_style.battle_rows([Pair("m", "u", "A>B", None, NO_STYLE, NO_STYLE),
                                             Pair("m", "v", "B>A", "A=B", NO_STYLE, NO_STYLE)])
    assert dropped == 1 and rows.outcomes.tolist() == [0.5, 1.0]


def test_bt_raw_is_the_weighted_win_share():
    rows = _rows(["m"] * 6, [1, 1, 1, 1, 0, 0.5])  # one decisive win (3 rows), a slight win, a loss, a tie
    assert arena_style.raw_win_rates(rows)["m"] == pytest.approx(4.5 / 6)
    assert arena_style.win_rates(rows, style=False, fit="optimum")["m"] == pytest.approx(4.5 / 6, abs=1e-6)
    assert arena_style.win_rates(rows, style=False)["m"] == pytest.approx(4.5 / 6, abs=0.01)  # official: 50 L-BFGS steps


def test_bt_style_control_removes_the_style_advantage():
    # style +1 (e.g. longer than the baseline): 8 of 10 won; style -1: 4 of 10 won
    f = [[1, 0, 0, 0]] * 10 + [[-1, 0, 0, 0]] * 10
    rows = _rows(["m"] * 20, [float(i < 8) for i in range(10)] + [float(i < 4) for i in range(10)], f)
    assert arena_style.raw_win_rates(rows)["m"] == pytest.approx(0.6)
    # one model, a symmetric style column: the intercept is (logit .8 + logit .4) / 2
    assert arena_style.win_rates(rows, style=True, fit="optimum")["m"] == pytest.approx(sigmoid((logit(0.8) + logit(0.4)) / 2), abs=1e-6)


def test_joint_fit_reaches_the_likelihood_optimum_with_a_shared_style_coefficient():
    from scipy.optimize import minimize

    # two models, answers long (+1) or short (-1) against the baseline; the judge likes long ones
    wins = {("a", 1): 9, ("a", -1): 5, ("b", 1): 7, ("b", -1): 3}
    models, outcomes, feats = [], [], []
    for (m, st), k in wins.items():
        for i in range(10):
            models.append(m)
            outcomes.append(float(i < k))
            feats.append([st, 0, 0, 0])
    rows = _rows(models, outcomes, feats)
    joint = arena_style.win_rates(rows, style=True, fit="optimum")
    x = np.asarray(feats)[:, 0]
    z = (x - x.mean()) / x.std(ddof=1)
    ia = np.array([m == "a" for m in models], dtype=float)
    y = np.asarray(outcomes)

    def nll(theta):  # the official loss: BCE with logits, summed
        logits = theta[0] * ia + theta[1] * (1 - ia) + theta[2] * z
        return float(np.sum(np.logaddexp(0, logits) - y * logits))

    best = minimize(nll, np.zeros(3), method="BFGS", options={"gtol": 1e-10}).x
    assert joint["a"] == pytest.approx(sigmoid(best[0]), abs=1e-5)
    assert joint["b"] == pytest.approx(sigmoid(best[1]), abs=1e-5)
    # the style advantage is shared: both models move the same way from their raw win rates
    raw = arena_style.raw_win_rates(rows)
    assert raw == {"a": pytest.approx(0.7), "b": pytest.approx(0.5)} and joint["a"] < 0.75 and joint["b"] < 0.55


def test_official_bootstrap_is_seeded_and_brackets_the_median():
    rng = random.Random(1)
    rows = _rows(["m"] * 80, [float(rng.random() < 0.7) for _ in range(80)], [[rng.gauss(0, 1), 0, 0, 0] for _ in range(80)])
    med, lo, hi = arena_style.official_bootstrap(rows, True, rounds=50, seed=0)["m"]
    assert lo < med < hi and 0 < hi - lo < 0.5
    assert arena_style.official_bootstrap(rows, True, rounds=50, seed=0)["m"] == (med, lo, hi)
    low, high = arena_style.prompt_bootstrap(rows, True, rounds=50, seed=0)["m"]
    assert low < arena_style.win_rates(rows, True)["m"] < high


def test_style_metadata_counts_markdown_outside_code_and_o200k_tokens():
    text = "# Title\n\nSome **bold** words and __more__.\n\n- one\n- two\n1. three\n## Sub\n```\n# code\n- code\n```"
    meta = arena_style.style_metadata(text)
    assert meta["header_count"] == 2 and meta["list_count"] == 3 and meta["bold_count"] == 2
    assert meta["token_len"] == len(arena_style.o200k_encoding().encode(text, disallowed_special=()))
    assert arena_style.o200k_encoding().encode("hello world") == [24912, 2375]  # o200k_base ids
    f = arena_style.relative_style({"token_len": 30, "header_count": 3, "list_count": 0, "bold_count": 0},
                                   {"token_len": 10, "header_count": 0, "list_count": 0, "bold_count": 0})
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx((3 / 31) / (3 / 31 + 1)) and f[2] == 0
    assert arena_style.relative_style(NO_STYLE, NO_STYLE).tolist() == [0, 0, 0, 0]


# ------------------------------------------------------------------ WildBench, Creative Writing, parsers


def test_wildbench_rewards_and_length_penalty():
    from rlmt.benchmarks import get_benchmark

    wb = get_benchmark("wildbench", length_penalty_k=500)
    assert wb.item_reward("A++", "A", 100, 100, "paper") == 100
    assert wb.item_reward("A++", "B", 100, 100, "paper") == -100
    assert wb.item_reward("B+", "B", 100, 100, "paper") == 50
    assert wb.item_reward("A=B", "A", 100, 100, "official") == 0
    # a slight win by an answer > K characters longer becomes a tie (official only) ...
    assert wb.item_reward("A+", "A", 1700, 1000, "official") == 0
    assert wb.item_reward("A+", "A", 1700, 1000, "paper") == 50
    assert wb.item_reward("A+", "A", 1400, 1000, "official") == 50
    # ... as does a slight loss to a much longer reference; decisive verdicts keep their value
    assert wb.item_reward("B+", "A", 100, 900, "official") == 0
    assert wb.item_reward("B++", "A", 100, 900, "official") == -100


def test_creative_writing_inverts_flaws():
    from rlmt.benchmarks import get_benchmark

    cw = get_benchmark("creative-writing-v3")
    # positives 16 and 10, a flaw scored 4 (-> 16): mean 14, x5 = 70
    assert cw.piece_score({"Coherent": 16, "Elegant Prose": 10, "Meandering": 4}, {"Meandering"}) == pytest.approx(70.0)


def test_parsers():
    # official Arena-Hard v2 rule: upper-cased, [[X]] first, then [X], the last match wins
    assert parsing.parse_arena_verdict_official("[[A>B]] then [[B>>A]]") == "B>>A"
    assert parsing.parse_arena_verdict_official("[[a>b]]") == "A>B"
    assert parsing.parse_arena_verdict_official("verdict [B>A]") == "B>A"
    assert parsing.parse_arena_verdict_official("[[ B>A ]]") is None and parsing.parse_arena_verdict_official("[[A>>>B]]") is None
    assert parsing.parse_arena_verdict_official("My final verdict is [[B<A]]") == "B<A"
    assert parsing.parse_arena_verdict("[[ B>A ]]") == "B>A"  # the lenient option
    assert parsing.parse_arena_verdict("blah [[A>B]] final: [[A>B]]") == "A>B"
    assert parsing.parse_arena_verdict("[[A>B]] then [[B>>A]]") is None  # contradictory
    assert parsing.parse_arena_verdict("My final verdict is [[B<A]]") == "A>B"
    assert parsing.parse_arena_verdict("no label") is None
    # WildBench official: bare JSON only; a score of "0" is kept
    assert parsing.parse_wildbench_choice_official('{"choice": "A+"}') == "A+"
    assert parsing.parse_wildbench_choice_official('```json\n{"choice": "B++"}\n```') is None
    assert parsing.parse_wildbench_choice_official('{"choice": "C"}') is None
    assert parsing.parse_wildbench_score_official('{"score": "0"}') == 0.0
    assert parsing.parse_wildbench_score_official('Sure: {"score": 7}') is None
    # Creative Writing official: every "name: N" form, verbatim names, > 20 dropped
    assert parsing.parse_rubric_official("**Meandering**: 3\nCoherent: Score 12\nElegant Prose: [9]\nX: 25") == \
        {"**Meandering**": 3.0, "Coherent": 12.0, "Elegant Prose": 9.0}
    assert parsing.parse_wildbench_choice('```json\n{"analysis_a": "x {y}", "choice": "B++"}\n```') == "B++"
    assert parsing.parse_wildbench_choice('{"analysis_a": "cut off", "choice": "A+"') == "A+"
    assert parsing.parse_wildbench_choice('{"choice": "C"}') is None
    assert parsing.parse_better('Sure: {"reason": "r", "better": "b"}') == "B"
    assert parsing.parse_preference_letter(" M\n") == "M" and parsing.parse_preference_letter("Mm") is None
    assert parsing.parse_wildbench_score('{"score": "7"}') == 7.0 and parsing.parse_wildbench_score('{"score": 11}') is None
    assert parsing.parse_rubric("critique: fine\n[Scores]\nCoherent: 15\n**Meandering**: 3\nUnknown: 9\nElegant Prose: 25",
                                ["Coherent", "Meandering", "Elegant Prose"]) == {"Coherent": 15.0, "Meandering": 3.0}
    assert parsing.parse_string_list('["plans top-down", "checks constraints"]') == ["plans top-down", "checks constraints"]
