"""bench/ifeval_budget.py's arithmetic: re-estimating IFEval's four metrics after re-answering capped prompts.

Expected values are worked out by hand below from four prompts' verdicts, counted the way the IFEval scorer
counts them (an undecidable level leaves the denominator; a prompt without an answer fails everything)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ifeval_budget", ROOT / "bench" / "ifeval_budget.py")
budget = importlib.util.module_from_spec(spec)
spec.loader.exec_module(budget)


def row(strict, loose, instructions):
    return {"details": {"prompt_strict": strict, "prompt_loose": loose,
                        "instructions": [{"id": "x", "strict": s, "loose": lo} for s, lo in instructions]}}


NO_ANSWER = {"details": {"reason": "no-answer"}}
N_INSTRUCTIONS = {"p1": 1, "p2": 2, "p3": 1, "p4": 2}
BEFORE = {"p1": row(False, False, [(False, False)]),
          "p2": row(True, True, [(True, True), (True, True)]),
          "p3": NO_ANSWER,
          "p4": row(False, True, [(False, True), (True, True)])}
AFTER = {"p1": row(True, True, [(True, True)]),          # the longer answer passes
         "p3": row(None, None, [(None, None)])}          # now answered, but only by an unscorable instruction


def test_re_answering_every_capped_prompt_gives_the_exact_new_metrics():
    r = budget.estimate(BEFORE, AFTER, ["p1", "p3"], n_capped=2, n_instructions=N_INSTRUCTIONS)
    # prompt strict: before p2 of 4; after p1, p2 of p1, p2, p4 (p3 undecidable)
    assert r["prompt_strict"]["full_before"] == pytest.approx(25.0)
    assert r["prompt_strict"]["full_estimate"] == pytest.approx(200 / 3)
    # prompt loose: before p2, p4 of 4; after p1, p2, p4 of 3
    assert r["prompt_loose"]["full_before"] == pytest.approx(50.0)
    assert r["prompt_loose"]["full_estimate"] == pytest.approx(100.0)
    # instruction strict: before 0/1 + 2/2 + 0/1 + 1/2 = 3/6; after 1/1 + 2/2 + 0/0 + 1/2 = 4/5
    assert r["instruction_strict"]["full_before"] == pytest.approx(50.0)
    assert r["instruction_strict"]["full_estimate"] == pytest.approx(80.0)
    # the sample alone: p1 and p3 fail before (0 of 2); after, p1 passes and p3 is not counted
    assert r["prompt_strict"]["sample_before"] == 0.0 and r["prompt_strict"]["sample_after"] == 100.0


def test_a_sample_change_is_scaled_to_every_capped_prompt():
    # p1 alone stands for 2 capped prompts: +1 pass becomes +2 of the same 4 counted prompts
    r = budget.estimate(BEFORE, AFTER, ["p1"], n_capped=2, n_instructions=N_INSTRUCTIONS)
    assert r["prompt_strict"]["full_estimate"] == pytest.approx(75.0)
    assert r["prompt_strict"]["ci_low"] == r["prompt_strict"]["ci_high"] == pytest.approx(75.0)  # one prompt: no spread


def test_the_ci_spans_the_sampled_prompts_disagreement():
    after = {**AFTER, "p3": row(False, False, [(False, False)])}  # p3 answered, still failing
    r = budget.estimate(BEFORE, after, ["p1", "p3"], n_capped=2, n_instructions=N_INSTRUCTIONS)
    m = r["prompt_strict"]
    # resamples of {p1, p3} gain 0 (p3 twice), 1 or 2 passes (p1 twice) on the same 4 prompts: 25, 50 or 75
    assert m["full_estimate"] == pytest.approx(50.0)
    assert m["ci_low"] == pytest.approx(25.0) and m["ci_high"] == pytest.approx(75.0)
