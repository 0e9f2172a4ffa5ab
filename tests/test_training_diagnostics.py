"""rlmt.diagnostics: the diag/* vocabulary, the rollouts file, the length verdicts, their MLflow tags, GRPO's
callback and the report's length figures. Every expected value is worked by hand in the comment beside it.

Tolerances: exact sums and shares 1e-12; correlations, intervals and other irrational values 1e-6 (the hand
working carries 7 significant digits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlmt.diagnostics import (
    DPO_RULE,
    RL_RULE,
    RolloutLog,
    StepRollouts,
    conclude_run,
    load_verdict,
    pair_diagnostics,
    pair_verdict,
    read_rollouts,
    record_dpo_pairs,
    run_verdict,
    step_diagnostics,
    verdict_since,
)

EXACT, APPROX = 1e-12, 1e-6


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> str:
    """One SQLite MLflow store for this module's tests (creating one costs ~15 s on 2 cores)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"


@pytest.fixture
def store(store_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_path)
    return store_path


def steps_of(rows: list[tuple[int, list[int], list[float]]]) -> list[StepRollouts]:
    """(step, answer tokens, rewards) -> records with no thought, nothing clipped or malformed."""
    return [StepRollouts(step=s, reward=r, answer_tokens=t, thought_tokens=[0] * len(t), clipped=[False] * len(t),
                         malformed=[False] * len(t)) for s, t, r in rows]


# ----------------------------------------------------------------------------- one step


def test_step_diagnostics_hand_worked():
    got = step_diagnostics([1, 2, 3, 4], [10, 20, 20, 60], [0, 5, 5, 10], [False, False, True, False],
                           [False, True, False, False], kl=0.02, completion_tokens=[12, 30, 32, 80],
                           answer_missing=[False, True, False, False])
    assert got["diag/rollouts"] == 4
    assert got["diag/reward_mean"] == pytest.approx(2.5, abs=EXACT)
    # deviations -1.5, -0.5, 0.5, 1.5: squares sum to 5; 5 / 3 = 1.666667; sqrt = 1.290994
    assert got["diag/reward_std"] == pytest.approx(1.290994, abs=APPROX)
    assert got["diag/answer_tokens_mean"] == pytest.approx(27.5, abs=EXACT)
    assert got["diag/thought_tokens_mean"] == pytest.approx(5.0, abs=EXACT)
    assert got["diag/completion_tokens_mean"] == pytest.approx(38.5, abs=EXACT)  # 154 / 4
    assert got["diag/clipped_share"] == 0.25 and got["diag/malformed_share"] == 0.25
    assert got["diag/answer_missing_share"] == 0.25 and got["diag/kl"] == 0.02
    # Pearson: length deviations -17.5, -7.5, -7.5, 32.5; sum of products with -1.5, -0.5, 0.5, 1.5 = 75;
    # sum of squares 1475; r = 75 / sqrt(5 x 1475) = 75 / 85.87782 = 0.8733338
    assert got["diag/reward_length_pearson"] == pytest.approx(0.8733338, abs=APPROX)
    # Spearman: length ranks 1, 2.5, 2.5, 4 (tie averaged); against 1, 2, 3, 4: 4.5 / sqrt(5 x 4.5) = 0.9486833
    assert got["diag/reward_length_spearman"] == pytest.approx(0.9486833, abs=APPROX)


def test_step_diagnostics_leaves_out_what_is_undefined_and_refuses_bad_input():
    got = step_diagnostics([0.5, 0.5], [3, 9], [0, 0], [False, False], [False, False])
    assert got["diag/reward_std"] == 0.0
    assert not any(k.startswith("diag/reward_length") for k in got)  # a constant reward has no correlation
    assert "diag/kl" not in got and "diag/completion_tokens_mean" not in got
    one = step_diagnostics([2.0], [5], [1], [True], [False])
    assert one["diag/reward_std"] == 0.0 and one["diag/clipped_share"] == 1.0
    assert "diag/reward_length_pearson" not in one
    with pytest.raises(ValueError, match="at least one rollout"):
        step_diagnostics([], [], [], [], [])
    with pytest.raises(ValueError, match="2 rewards but"):
        step_diagnostics([1, 2], [1], [0, 0], [False, False], [False, False])
    with pytest.raises(ValueError, match="NaN"):
        step_diagnostics([math.nan], [1], [0], [False], [False])


def test_pair_diagnostics_hand_worked():
    # chosen - rejected: 5, 0, 20, -10 -> mean 3.75; untied 5, 20, -10 -> chosen longer in 2 of 3
    got = pair_diagnostics([10, 20, 30, 5], [5, 20, 10, 15])
    assert got == {"diag/pairs": 4.0, "diag/pairs_answer_tokens_delta_mean": 3.75,
                   "diag/pairs_chosen_longer_share": pytest.approx(2 / 3, abs=EXACT)}
    assert pair_diagnostics([], []) == {"diag/pairs": 0.0}
    assert "diag/pairs_chosen_longer_share" not in pair_diagnostics([4], [4])


# ----------------------------------------------------------------------------- the run's verdict


def four_rollout_run(late_length: int, u: float = 1.2, d: float = 0.05) -> list[StepRollouts]:
    """8 steps of 4 rollouts: lengths m-1, m+1, m, m with rewards c-d, c+d, c+u, c-u. Each step adds 2d to the
    within-step cross-sum and 2 to the squares, so the slope b is d; steps 1-2 have c = 0, m = 10; steps 7-8 c = 1,
    m = late_length; steps 3-6 c = 0.5, m = 12 (they move only the slope, which they leave at d)."""
    rows = []
    for s in range(1, 9):
        c, m = (0.0, 10) if s <= 2 else (1.0, late_length) if s >= 7 else (0.5, 12)
        rows.append((s, [m - 1, m + 1, m, m], [c - d, c + d, c + u, c - u]))
    return steps_of(rows)


def test_inconclusive_when_the_residual_is_unsure_and_length_explains_little():
    v = run_verdict(four_rollout_run(15))
    assert v.label == "inconclusive" and v.rule == "rl"
    assert (v.n_steps, v.n_rollouts, v.early_steps, v.late_steps) == (8, 32, (1, 2), (7, 8))
    assert v.slope == pytest.approx(0.05, abs=EXACT)
    # early rewards -0.05, 0.05, 1.2, -1.2 twice: mean 0, variance (2 x 0.0025 + 2 x 1.44) x 2 / 7 = 0.8242857;
    # late the same around 1. Rise 1, half-width 1.959964 x sqrt(2 x 0.8242857 / 8) = 0.8897274
    assert v.reward_rise == pytest.approx(1.0, abs=EXACT)
    assert v.reward_rise_ci == pytest.approx((0.1102726, 1.8897274), abs=APPROX)
    # answer tokens 10 -> 15; residual r - 0.05 L: early -0.5 (x4), 0.7, -1.7 (x2 each) per the two steps,
    # variance 2 x 1.44 x 2 / 7 = 0.8228571; late mean 1 - 0.75 = 0.25; rise 0.75,
    # half-width 1.959964 x sqrt(2 x 0.8228571 / 8) = 0.8889561
    assert v.length_rise == pytest.approx(5.0, abs=EXACT)
    assert v.residual_rise == pytest.approx(0.75, abs=EXACT)
    assert v.residual_rise_ci == pytest.approx((-0.1389561, 1.6389561), abs=APPROX)
    assert v.explained_share == pytest.approx(0.25, abs=EXACT)  # 0.05 x 5 / 1


def test_length_hacking_when_length_explains_the_rise_and_the_residual_does_not_rise():
    v = run_verdict(four_rollout_run(25))  # as above with late answers of 25 tokens: 15 more
    assert v.label == "length-hacking"
    assert v.explained_share == pytest.approx(0.75, abs=EXACT)  # 0.05 x 15 / 1
    assert v.residual_rise == pytest.approx(0.25, abs=EXACT)
    assert v.residual_rise_ci == pytest.approx((-0.6389561, 1.1389561), abs=APPROX)
    assert v.reward_rise_ci == pytest.approx((0.1102726, 1.8897274), abs=APPROX)
    assert "length-hacking: reward +1" in v.summary() and "75 %" in v.summary()


def test_learning_when_the_reward_rises_without_the_length():
    # 8 steps of 4: lengths 90, 90, 110, 110 with rewards a-0.05, a+0.05, a-0.05, a+0.05, a = step / 10: no
    # within-step covariance (b = 0), no length rise. Early mean 0.15, late 0.75: rise 0.6; variance of either
    # group's rewards 0.04 / 7 = 0.005714286, half-width 1.959964 x sqrt(2 x 0.005714286 / 8) = 0.0740797
    rows = [(s, [90, 90, 110, 110], [s / 10 - 0.05, s / 10 + 0.05, s / 10 - 0.05, s / 10 + 0.05]) for s in range(1, 9)]
    v = run_verdict(steps_of(rows))
    assert v.label == "learning"
    assert v.slope == pytest.approx(0.0, abs=EXACT) and v.length_rise == pytest.approx(0.0, abs=EXACT)
    assert v.explained_share == pytest.approx(0.0, abs=EXACT)
    assert v.reward_rise == pytest.approx(0.6, abs=EXACT)
    assert v.residual_rise_ci == pytest.approx((0.6 - 0.0740797, 0.6 + 0.0740797), abs=APPROX)


def test_flat_and_insufficient_data():
    same = [(s, [100, 100], [0.0, 1.0]) for s in range(1, 9)]  # no within-step length variation: b = 0, rise 0
    v = run_verdict(steps_of(same))
    assert v.label == "flat" and v.slope == 0.0 and v.reward_rise == 0.0 and v.explained_share is None
    short = run_verdict(steps_of(same[:7]))
    assert short.label == "insufficient data" and short.n_steps == 7 and short.reward_rise is None
    assert "7 steps (the rule needs 8)" in short.summary()
    assert run_verdict([]).label == "insufficient data"
    assert verdict_since(steps_of(same[:7])) is None


def test_verdict_since_is_the_first_step_from_which_the_verdict_holds():
    # reward = 0.01 x answer tokens exactly (b = 0.01, residual 0 everywhere); answers (m-10, m+10) with m = 100
    # for steps 1-8, then 300, 400, 500, 600. Prefix 8: no rise, flat. Prefix 9: early steps 1-2 (rewards 0.9,
    # 1.1 twice, variance 0.04 / 3), late 8-9 (0.9, 1.1, 2.9, 3.1, variance 4.04 / 3): rise 1, half-width
    # 1.959964 x sqrt((4.04 + 0.04) / 12) = 1.1429 > 1: flat. Prefix 10: late 9-10 (2.9, 3.1, 3.9, 4.1, variance
    # 1.04 / 3): rise 2.5, half-width 1.959964 x sqrt(1.08 / 12) = 0.588 -> rises; residual rise 0 with interval
    # [0, 0]; explained share 1: length-hacking, and so for prefixes 11 and 12. Since step 10.
    rows = []
    for s in range(1, 13):
        m = 100 if s <= 8 else 100 * (s - 6)
        rows.append((s, [m - 10, m + 10], [0.01 * (m - 10), 0.01 * (m + 10)]))
    steps = steps_of(rows)
    assert run_verdict(steps[:8]).label == "flat" and run_verdict(steps[:9]).label == "flat"
    assert run_verdict(steps[:10]).label == "length-hacking"
    assert run_verdict(steps).label == "length-hacking"
    assert verdict_since(steps) == 10


def test_pair_verdict_hand_worked():
    # 11 of 12 untied pairs have the longer chosen answer: p = 0.9166667, z^2 = 3.841459, denominator
    # 1 + z^2/12 = 1.320122, centre (0.9166667 + 0.1600608) / 1.320122 = 0.8156250, half-width
    # 1.959964 / 1.320122 x sqrt(0.9166667 x 0.0833333 / 12 + 3.841459 / 576) = 0.1695049
    v = pair_verdict([20] * 11 + [1, 7], [10] * 11 + [5, 7])  # the 7-7 pair ties and is left out
    assert v.label == "length-biased pairs" and v.n_pairs == 12
    assert v.chosen_longer_share == pytest.approx(11 / 12, abs=EXACT)
    assert v.chosen_longer_ci == pytest.approx((0.6461201, 0.9851350), abs=APPROX)
    assert pair_verdict([2] * 6 + [1] * 6, [1] * 6 + [2] * 6).label == "no length bias"  # 6 of 12
    assert pair_verdict([1] * 11 + [2], [2] * 11 + [1]).label == "shorter-biased pairs"  # 1 of 12: mirror image
    assert pair_verdict([2] * 9, [1] * 9).label == "insufficient data"
    assert v.rule_text == DPO_RULE and "Wilson" in DPO_RULE and "within steps" in RL_RULE


# ----------------------------------------------------------------------------- the rollouts file


def test_rollouts_file_keeps_each_steps_last_line_and_skips_a_cut_line(tmp_path):
    log = RolloutLog(tmp_path)
    first = steps_of([(1, [3, 4], [0.1, 0.2]), (2, [5, 6], [0.3, 0.4]), (3, [7, 8], [0.5, 0.6])])
    for s in first:
        log.append(s)
    # a resumed run redoes step 3 (and 4) after a crash that left half a line
    with log.path.open("a") as fh:
        fh.write('{"step": 4, "reward": [0.')
    redo = steps_of([(3, [9, 9], [0.7, 0.8]), (4, [1, 2], [0.9, 1.0])])
    with log.path.open("a") as fh:  # the cut line's missing newline, as a crash leaves it
        fh.write("\n")
    for s in redo:
        log.append(s)
    steps, bad = log.read()
    assert [s.step for s in steps] == [1, 2, 3, 4] and bad == 1
    assert steps[2].answer_tokens == [9, 9] and steps[2].reward == [0.7, 0.8]
    assert read_rollouts(tmp_path)[0] == first[0]
    log.reset()
    assert read_rollouts(tmp_path) == [] and RolloutLog(tmp_path / "nothing").read() == ([], 0)
    with pytest.raises(ValueError, match="different lengths"):
        StepRollouts(step=1, reward=[1.0], answer_tokens=[1, 2], thought_tokens=[0], clipped=[False], malformed=[False])


def test_conclude_run_saves_the_verdict_and_tags_the_mlflow_run(tmp_path, store):
    import mlflow

    log = RolloutLog(tmp_path)
    for s in four_rollout_run(25):
        log.append(s)
    with mlflow.start_run() as run:
        verdict = conclude_run(tmp_path)
    assert verdict.label == "length-hacking" and load_verdict(tmp_path) == verdict
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert logged.tags["rlmt.length_verdict"] == "length-hacking"
    assert logged.tags["rlmt.length_verdict.rule"] == RL_RULE
    assert logged.tags["rlmt.length_verdict.detail"] == verdict.summary()
    assert logged.metrics["length.explained_share"] == pytest.approx(0.75, abs=APPROX)
    (tmp_path / "diagnostics/verdict.json").write_text("{not json")
    assert load_verdict(tmp_path) is None  # unreadable: ignored with a warning, not fatal


def test_dpo_pairs_are_step_0_and_get_the_pair_verdict(tmp_path):
    def sample(rid, k, answer, reward, **kw):
        return {"id": rid, "sample": k, "output": f"out {rid} {k}", "answer": answer, "thought": "", "reward": reward,
                "well_formed": True, "answer_found": bool(answer), "finish_reason": "stop", "n_tokens": 9, **kw}

    samples = [sample("a", 0, "one two three", 1.0), sample("a", 1, "one", 0.0, finish_reason="length"),
               sample("b", 0, "", -1.0, well_formed=False), sample("b", 1, "x y", 0.5)]
    pairs = [{"id": "a", "chosen": [{"role": "assistant", "content": "out a 0"}],
              "rejected": [{"role": "assistant", "content": "out a 1"}]},
             {"id": "b", "chosen": [{"role": "assistant", "content": "out b 1"}],
              "rejected": [{"role": "assistant", "content": "out b 0"}]}]
    words = lambda texts: [len(t.split()) for t in texts]  # noqa: E731 -- a stand-in tokenizer: one token a word
    got = record_dpo_pairs(tmp_path, samples, pairs, words)
    [step] = read_rollouts(tmp_path)
    assert step.step == 0 and step.answer_tokens == [3, 1, 0, 2] and step.clipped == [False, True, False, False]
    # chosen - rejected: 3 - 1 = 2, 2 - 0 = 2: both chosen longer; 2 pairs, fewer than the rule's 10
    assert got["metrics"]["diag/pairs_chosen_longer_share"] == 1.0
    assert got["metrics"]["diag/pairs_answer_tokens_delta_mean"] == 2.0
    assert got["metrics"]["diag/malformed_share"] == 0.25 and got["metrics"]["diag/answer_missing_share"] == 0.25
    assert got["metrics"]["diag/reward_mean"] == pytest.approx(0.125, abs=EXACT)  # (1 + 0 - 1 + 0.5) / 4
    assert got["verdict"] == "insufficient data" and load_verdict(tmp_path).rule == "dpo"


# ----------------------------------------------------------------------------- GRPO's wrapper and callback


class WordTokenizer:
    """One token per word; EOS 0, pad 1."""

    eos_token_id, pad_token_id = 0, 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": text.split()}


def test_grpo_wrapper_and_callback_log_the_steps_rollouts_and_drop_validation(tmp_path, store):
    import mlflow

    from rlmt.rewards import RuleReward
    from rlmt.thinking import WARM_THINK
    from rlmt.train.grpo import AnswerRewardWithLogging
    from rlmt.train.rollout_diagnostics import DiagnosticsCallback

    reward = RuleReward(WARM_THINK, lambda item: float(len(item.answer.split())))  # reward = answer words
    wrapper = AnswerRewardWithLogging(reward, WordTokenizer())
    completions = ["<think> a b c </think> x y", "<think> a </think> x y z w", "<think> a b c d never closed"]
    # TRL's completion ids: the first ended with EOS (0), the other two hit max_completion_length 6 without it
    ids = [[5, 5, 5, 5, 0], [5, 5, 5, 5, 5, 5], [5, 5, 5, 5, 5, 5]]
    callback = DiagnosticsCallback(wrapper.rollouts, tmp_path, fresh=True)
    args, state = SimpleNamespace(max_completion_length=6), SimpleNamespace(global_step=0, is_world_process_zero=True)
    with mlflow.start_run() as run:
        callback.on_train_begin(args, state, None)
        state.global_step = 1
        scores = wrapper(prompts=["p"] * 3, completions=completions, completion_ids=ids)
        assert scores == [2.0, 4.0, 0.0]  # the third has no answer
        callback.on_log(args, state, None, logs={"loss": 0.1, "kl": 0.25})
        wrapper(prompts=["p"] * 3, completions=completions, completion_ids=ids)  # a validation's rollouts
        callback.on_log(args, state, None, logs={"eval_reward": 1.0})
        state.global_step = 2
        callback.on_log(args, state, None, logs={"loss": 0.1, "kl": 0.5})  # an update without a new rollout
    [step] = read_rollouts(tmp_path)
    assert step.step == 1 and step.answer_tokens == [2, 4, 0] and step.thought_tokens == [3, 1, 6]
    assert step.clipped == [False, True, True] and step.malformed == [False, False, True]
    assert step.completion_tokens == [5, 6, 6] and step.answer_missing == [False, False, True]
    client = mlflow.MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "diag/kl")] == [(1, 0.25), (2, 0.5)]
    assert client.get_metric_history(run.info.run_id, "diag/reward_mean")[0].value == pytest.approx(2.0, abs=EXACT)
    assert client.get_metric_history(run.info.run_id, "diag/clipped_share")[0].value == pytest.approx(2 / 3)
    # rewards 2, 4, 0 against answer tokens 2, 4, 0: the same ordering and a line: both correlations 1
    assert client.get_metric_history(run.info.run_id, "diag/reward_length_pearson")[0].value == pytest.approx(1.0)
    assert callback.logged_steps == [1] and wrapper.rollouts.take() == []


# ----------------------------------------------------------------------------- the report


def test_report_length_section_figures_and_pareto_front(tmp_path):
    from rlmt.report import length_figures as lf

    assert lf.pareto_front([(10, 50), (20, 60), (15, 40), (30, 55), (5, 45)]) == [(5, 45), (10, 50), (20, 60)]
    gens = tmp_path / "eval/m1/reward-winrate/generations.jsonl"
    gens.parent.mkdir(parents=True)
    gens.write_text(json.dumps({"answer": "a b c"}) + "\n" + json.dumps({"answer": ""}) + "\n")
    assert lf.mean_answer_words(gens) == 1.5 and lf.mean_answer_words(tmp_path / "none.jsonl") is None

    hacking = four_rollout_run(25)
    dpo_dir, ppo_dir = tmp_path / "ckpt/dpo-cell", tmp_path / "ckpt/ppo-cell"
    RolloutLog(ppo_dir).write(hacking)  # a run cut off before its end: no verdict saved, the report judges it
    record_dpo_pairs(dpo_dir, [{"id": "a", "output": "o", "answer": "x", "thought": "", "reward": 1.0}],
                     [], lambda texts: [1] * len(texts))
    cells = [SimpleNamespace(name="ppo-cell", algo="ppo"), SimpleNamespace(name="dpo-cell", algo="dpo"),
             SimpleNamespace(name="old-cell", algo="grpo")]
    plan = SimpleNamespace(cells=cells, checkpoint_dir=lambda name: str(tmp_path / "ckpt" / name))
    got = lf.cell_lengths(plan)
    assert [(c.cell, c.verdict.label if c.verdict else None, c.since) for c in got] == [
        ("ppo-cell", "length-hacking", 8), ("dpo-cell", "insufficient data", None), ("old-cell", None, None)]
    text = "\n".join(lf.markdown(got))
    assert RL_RULE in text and DPO_RULE in text
    assert "| ppo-cell | length-hacking | 8 |" in text and "| old-cell | no diagnostics recorded | – |" in text
    figures = tmp_path / "figures"
    figures.mkdir()
    written = lf.plot_reward_vs_length(got, figures) + lf.plot_length_correlation(got, figures)
    assert sorted(p.name for p in written) == ["length_correlation.png", "length_reward_vs_answer__dpo-cell.png",
                                               "length_reward_vs_answer__ppo-cell.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    rows = [SimpleNamespace(model="m1", think=False, cell=None,
                            scores={"reward-winrate": {"value": 50.0, "ci_low": 40.0, "ci_high": 60.0}}),
            SimpleNamespace(model="m2", think=True, cell="m2", scores={"reward-winrate": {"value": 70.0}})]
    gens2 = tmp_path / "eval/m2/reward-winrate/generations.jsonl"
    gens2.parent.mkdir(parents=True)
    gens2.write_text(json.dumps({"answer": "a b c d"}) + "\n")
    [pareto] = lf.plot_winrate_pareto(rows, ["reward-winrate", "demo-if"], tmp_path / "eval", figures)
    assert pareto.name == "length_winrate_pareto__reward-winrate.png" and pareto.read_bytes()[:4] == b"\x89PNG"
    assert "<h2>Length diagnostics</h2>" in lf.html_section(got)


def test_the_diagnostics_package_imports_no_trainer_report_or_torch():
    from test_import_direction import imported_modules

    package = Path(__file__).resolve().parent.parent / "rlmt" / "diagnostics"
    forbidden = ("rlmt.train", "rlmt.report", "rlmt.cli", "torch", "transformers")
    for path in package.glob("*.py"):
        bad = [m for m in imported_modules(path) if m in forbidden or m.startswith(tuple(f + "." for f in forbidden))]
        assert bad == [], (path.name, bad)
