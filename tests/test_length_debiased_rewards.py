"""Length-debiased rewards (issue 30, item 4): DAPO's soft overlong penalty, the ODIN-style correction and
its calibration (never on evaluation prompts), and length-balanced reward-model pairs.

Expected values are worked by hand in the comments. Answer lengths are hand-countable where the test
needs them: :class:`WordTokenizer` gives one token per whitespace-separated word.
"""

from __future__ import annotations

import json
import math

import pytest

from rlmt.thinking import WARM_NOTHINK

USER = "user"


class WordTokenizer:
    """Stands in for a tokenizer where lengths must be countable by eye: one token per word."""

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False, "an answer's own tokens: no special tokens"
        return {"input_ids": [[7] * len(t.split()) for t in texts]}


def _words(n: int) -> str:
    return " ".join(["w"] * n)


def _item(answer: str):
    from rlmt.rewards import AnswerItem

    return AnswerItem([{"role": USER, "content": "q"}], answer)


# ---------------------------------------------------------------------- DAPO's soft overlong penalty


def test_length_penalty_is_dapo_eq13_on_answer_tokens():
    from rlmt.rewards import RuleReward
    from rlmt.rewards.length import AnswerTokens, LengthPenaltyReward

    base = RuleReward(WARM_NOTHINK, lambda item: 0.5)
    reward = LengthPenaltyReward(WARM_NOTHINK, base, AnswerTokens(WordTokenizer()), max_answer_tokens=10,
                                 soft_punish_cache=4, coefficient=2.0)
    # DAPO eq. 13, L_max 10, L_cache 4 (ramp from 6 tokens): 5 -> 0; 6 -> 0; 8 -> (6-8)/4 = -0.5;
    # 10 -> (6-10)/4 = -1; 11 -> -1 (past L_max). Score = 0.5 + 2 * penalty.
    scored = reward.score_answers([_item(_words(n)) for n in (5, 6, 8, 10, 11)])
    assert scored.scores == pytest.approx([0.5, 0.5, -0.5, -1.5, -1.5], abs=1e-12)
    assert scored.counts["length_penalized"] == 3 and scored.counts["answer_over_max_tokens"] == 1

    step = LengthPenaltyReward(WARM_NOTHINK, base, AnswerTokens(WordTokenizer()), max_answer_tokens=10,
                               soft_punish_cache=0)
    # L_cache 0: a step at L_max: 10 tokens -> 0, 11 -> -1
    assert step.score_answers([_item(_words(10)), _item(_words(11))]).scores == pytest.approx([0.5, -0.5])


def test_length_penalty_counts_the_extracted_answer_not_the_thought():
    """The penalty sees the answer only: a long thought before a short answer costs nothing."""
    from rlmt.rewards import RuleReward
    from rlmt.rewards.length import AnswerTokens, LengthPenaltyReward
    from rlmt.thinking import WARM_THINK

    base = RuleReward(WARM_THINK, lambda item: 0.0)
    reward = LengthPenaltyReward(WARM_THINK, base, AnswerTokens(WordTokenizer()), max_answer_tokens=4,
                                 soft_punish_cache=2)
    long_thought = f"<think>\n{_words(50)}\n</think>\n\nshort answer"
    long_answer = f"<think>\nhm\n</think>\n\n{_words(4)}"
    # answers: 2 tokens -> 0; 4 tokens -> (2-4)/2 = -1
    assert reward.score([[{"role": USER, "content": "q"}]] * 2, [long_thought, long_answer]).scores == [0.0, -1.0]


def test_penalty_spec_rejects_a_cache_longer_than_the_budget():
    from pydantic import ValidationError

    from rlmt.rewards.length import LengthPenaltySpec

    with pytest.raises(ValidationError, match="soft_punish_cache"):
        LengthPenaltySpec(kind="length_penalty", base="rm", tokenizer_model="m", max_answer_tokens=4,
                          soft_punish_cache=5)
    ok = LengthPenaltySpec(kind="length_penalty", base="rm", tokenizer_model="m", max_answer_tokens=4,
                           soft_punish_cache=4)
    assert ok.references() == {"reward_models": ["rm"], "models": ["m"]}
    assert _debiased_spec().references() == {"reward_models": ["rm"], "models": ["llama-instruct"],
                                             "mixtures": ["demo"]}


def test_length_penalty_built_from_its_config_entry_counts_the_policy_tokenizer(tiny_zoo):
    """Built as a job builds it: the base by name, the tokenizer_model's dir as input '<name>:tokenizer'."""
    from rlmt.models.loading import load_tokenizer
    from rlmt.rewards import BuildContext, build_reward, reward_inputs
    from rlmt.rewards.classifier import RewardModelSpec
    from rlmt.rewards.length import LengthPenaltySpec

    specs = {"rm": RewardModelSpec(source="tiny:reward"),
             "rm-short": LengthPenaltySpec(kind="length_penalty", base="rm", tokenizer_model="llama-instruct",
                                           max_answer_tokens=3, soft_punish_cache=2)}
    assert reward_inputs("rm-short", specs) == {"rm": "models/rm", "rm-short:tokenizer": "models/llama-instruct"}
    answer = "The quick brown fox jumps over the lazy dog."
    n = len(load_tokenizer(tiny_zoo["llama-instruct"])(answer, add_special_tokens=False)["input_ids"])
    assert n > 3  # the tiny BPE splits this sentence into more than 3 tokens: past L_max, the full penalty
    context = BuildContext(fmt=WARM_NOTHINK, device="cpu", inputs={"rm": tiny_zoo["reward"],
                                                                   "rm-short:tokenizer": tiny_zoo["llama-instruct"]})
    reward = build_reward("rm-short", specs, context)
    base = build_reward("rm", specs, context)
    prompt = [[{"role": USER, "content": "Say something."}]]
    base_score = base.score(prompt, [answer]).scores[0]
    assert reward.score(prompt, [answer]).scores[0] == pytest.approx(base_score - 1.0, abs=1e-5)
    # a 1-token answer (one BPE token, checked) is under L_max - L_cache = 1: no penalty
    one = next(w for w in ("a", "the", "I") if len(load_tokenizer(tiny_zoo["llama-instruct"])(
        w, add_special_tokens=False)["input_ids"]) == 1)
    assert reward.score(prompt, [one]).scores[0] == pytest.approx(base.score(prompt, [one]).scores[0], abs=1e-5)

    loop = {**specs, "rm-short": specs["rm-short"].model_copy(update={"base": "rm-short"})}
    with pytest.raises(ValueError, match="refers back to itself"):
        reward_inputs("rm-short", loop)
    with pytest.raises(ValueError, match=r"base: 'nope' is not defined"):
        reward_inputs("rm-short", {**specs, "rm-short": specs["rm-short"].model_copy(update={"base": "nope"})})


# ---------------------------------------------------------------------- the ODIN-style fit


def test_least_squares_fit_and_correction_by_hand():
    from rlmt.rewards.calibration import fit_length_line

    # lengths x = 2, 4, 6, 8 (mean 5), scores y = 1, 2, 2, 3 (mean 2); dx = -3, -1, 1, 3; dy = -1, 0, 0, 1
    # slope = sum(dx dy) / sum(dx^2) = (3 + 0 + 0 + 3) / (9 + 1 + 1 + 9) = 6/20 = 0.3; intercept = 2 - 0.3 * 5 = 0.5
    # r before = 6 / sqrt(20 * 2) = 3 / sqrt(10); corrected = y - 0.3 (x - 5) = 1.9, 2.3, 1.7, 2.1:
    # sum(dx * (corrected - 2)) = 0.3 - 0.3 - 0.3 + 0.3 = 0, so r after = 0
    fit = fit_length_line([1.0, 2.0, 2.0, 3.0], [2, 4, 6, 8])
    assert fit["slope"] == pytest.approx(0.3, abs=1e-12) and fit["intercept"] == pytest.approx(0.5, abs=1e-12)
    assert fit["mean_length"] == 5 and fit["n"] == 4
    assert fit["pearson_before"] == pytest.approx(3 / math.sqrt(10), abs=1e-12)
    assert fit["pearson_after"] == pytest.approx(0.0, abs=1e-12)

    from rlmt.rewards import RuleReward
    from rlmt.rewards.length import AnswerTokens, LengthDebiasedReward

    table = {_words(2): 1.0, _words(4): 2.0, _words(6): 2.0, _words(8): 3.0, _words(15): 3.0}
    reward = LengthDebiasedReward(WARM_NOTHINK, RuleReward(WARM_NOTHINK, lambda it: table[it.answer]),
                                  AnswerTokens(WordTokenizer()), slope=fit["slope"], mean_length=fit["mean_length"])
    scored = reward.score_answers([_item(a) for a in table])
    # 15 words: 3 - 0.3 * (15 - 5) = 0
    assert scored.scores == pytest.approx([1.9, 2.3, 1.7, 2.1, 0.0], abs=1e-12)

    with pytest.raises(ValueError, match="every calibration answer has 3 tokens"):
        fit_length_line([1.0, 2.0], [3, 3])


def test_correlations_by_hand():
    from rlmt.stats.correlation import pearson, spearman

    # x = 1, 2, 3, y = 1, 4, 9: ranks agree -> spearman 1; pearson: dx = -1, 0, 1, dy = -11/3, -2/3, 13/3:
    # sxy = 8, sxx = 2, syy = (121 + 4 + 169) / 9 = 294/9 -> r = 8 / sqrt(2 * 294/9) = 8 / sqrt(65.333...)
    assert spearman([1, 2, 3], [1, 4, 9]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [1, 4, 9]) == pytest.approx(8 / math.sqrt(588 / 9), abs=1e-12)
    # ties share their mean rank: x = 1, 1, 2 -> ranks 1.5, 1.5, 3; y = 3, 2, 1 -> ranks 3, 2, 1:
    # dx = -0.5, -0.5, 1; dy = 1, 0, -1 -> sxy = -1.5, sxx = 1.5, syy = 2 -> rho = -1.5 / sqrt(3) = -0.8660
    assert spearman([1, 1, 2], [3, 2, 1]) == pytest.approx(-1.5 / math.sqrt(3), abs=1e-12)
    assert pearson([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [5, 5]) is None


# ---------------------------------------------------------------------- calibration: never on evaluation prompts


def _prompt_file(path, rows):
    path.write_text("".join(json.dumps({"id": rid, "messages": [{"role": USER, "content": text}]}) + "\n"
                            for rid, text in rows))
    return path


def _debiased_spec(**calibration):
    from rlmt.rewards.length import LengthDebiasedSpec

    return LengthDebiasedSpec(kind="length_debiased", base="rm", tokenizer_model="llama-instruct",
                              calibration={"mixture": "demo", "policy": "llama-instruct", **calibration})


def test_calibration_refuses_evaluation_prompts_by_id_and_by_text(tmp_path):
    from rlmt.rewards.calibration import CalibrationOverlapError, check_disjoint
    from rlmt.generation.files import read_prompts

    evaluation = _prompt_file(tmp_path / "items.jsonl", [("e1", "Name three rivers."), ("e2", "Write a haiku.")])
    clean = read_prompts(_prompt_file(tmp_path / "a.jsonl", [("c1", "Describe a kite."), ("c2", "List two owls.")]))
    check_disjoint(clean, [evaluation])  # nothing shared: no error

    by_text = read_prompts(_prompt_file(tmp_path / "b.jsonl", [("c1", "Describe a kite."),
                                                               ("c9", "  name THREE   rivers.\n")]))
    with pytest.raises(CalibrationOverlapError, match=r"1 of 2 calibration prompts are evaluation prompts: "
                                                      r"'c9' \(its text is in .*items.jsonl\)"):
        check_disjoint(by_text, [evaluation])
    by_id = read_prompts(_prompt_file(tmp_path / "c.jsonl", [("e2", "Something else entirely.")]))
    with pytest.raises(CalibrationOverlapError, match=r"'e2' \(its id is in"):
        check_disjoint(by_id, [evaluation])

    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="split"):
        _debiased_spec(split="val")  # the win rate's prompts are not even a choice


def test_calibrate_refuses_before_generating(tmp_path):
    from rlmt.rewards.calibration import CalibrationOverlapError, calibrate

    evaluation = _prompt_file(tmp_path / "val.jsonl", [("v1", "Name three rivers.")])
    prompts = _prompt_file(tmp_path / "train.jsonl", [("t1", "Describe a kite."), ("t2", "Name three rivers.")])
    out = tmp_path / "cal" / "calibration.json"
    with pytest.raises(CalibrationOverlapError):
        calibrate("rm-debiased", _debiased_spec(), prompts=prompts, policy_dir=tmp_path / "no-policy",
                  evaluation_files=[evaluation], build_base=None, tokens=None, out=out)
    assert not out.parent.exists()  # nothing generated, nothing written


def test_calibration_fit_on_a_tiny_policy_removes_the_length_trend(tiny_zoo, tmp_path, one_torch_thread):
    """A tiny run: the tiny policy answers, a reward that grows with length (plus a per-answer wobble) scores,
    calibration.json holds the least-squares line, and the built length_debiased reward has r = 0 on those answers."""
    import hashlib

    import numpy as np

    from rlmt.generation.files import read_generations
    from rlmt.models.loading import load_tokenizer
    from rlmt.rewards import BuildContext, RuleReward
    from rlmt.rewards.calibration import calibrate
    from rlmt.rewards.length import LENGTH_DEBIASED, AnswerTokens
    from rlmt.stats.correlation import pearson

    def wobbly_length_reward(item):  # 0.05 per character plus a deterministic wobble in [0, 1)
        return 0.05 * len(item.answer) + hashlib.sha256(item.answer.encode()).digest()[0] / 256

    prompts = _prompt_file(tmp_path / "train.jsonl", [(f"t{i}", f"Tell me about topic number {i}.") for i in range(8)])
    evaluation = _prompt_file(tmp_path / "val.jsonl", [("v1", "Name three rivers.")])
    spec = _debiased_spec(n_prompts=6, max_new_tokens=12, temperature=1.0, seed=3)
    out = tmp_path / "rewards" / "rm-debiased" / "calibration.json"
    policy = tiny_zoo["llama-instruct"]
    fit = calibrate("rm-debiased", spec, prompts=prompts, policy_dir=policy, evaluation_files=[evaluation],
                    build_base=lambda fmt: RuleReward(fmt, wobbly_length_reward), tokens=AnswerTokens.load(policy),
                    out=out, generator_options={"device": "cpu"})
    assert json.loads(out.read_text()) == fit
    rows = read_generations(out.with_name("answers.jsonl"))
    assert sorted(r["id"] for r in rows) == [f"t{i}" for i in range(6)]  # the first n_prompts, nothing else
    tokenizer = load_tokenizer(policy)
    used = [r for r in rows if r["well_formed"]]
    lengths = [len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in used]
    scores = [0.05 * len(r["answer"]) + hashlib.sha256(r["answer"].encode()).digest()[0] / 256 for r in used]
    slope, intercept = np.polyfit(lengths, scores, 1)  # an independent least-squares fit
    assert fit["n"] == len(used) and fit["n_malformed_excluded"] == len(rows) - len(used)
    assert fit["slope"] == pytest.approx(slope, rel=1e-6) and fit["intercept"] == pytest.approx(intercept, rel=1e-6)
    assert fit["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert fit["pearson_before"] == pytest.approx(np.corrcoef(lengths, scores)[0, 1], abs=1e-9)
    assert abs(fit["pearson_after"]) < 1e-9

    # the reward as a job builds it, from calibration.json: its scores on the calibration answers have r = 0
    context = BuildContext(fmt=WARM_NOTHINK, inputs={"rm-debiased:tokenizer": policy, "rm-debiased:calibration": out},
                           build_named=lambda name: RuleReward(WARM_NOTHINK, wobbly_length_reward))
    reward = LENGTH_DEBIASED.build("rm-debiased", spec, context)
    corrected = reward.score([r["prompt"] for r in used], [r["output"] for r in used]).scores
    assert abs(pearson(lengths, corrected)) < 1e-9
    assert sum(corrected) / len(corrected) == pytest.approx(sum(scores) / len(scores))  # the mean is kept

    # a calibration fitted for another base is refused, not applied
    other = spec.model_copy(update={"base": "other-rm"})
    with pytest.raises(ValueError, match="fitted for base 'rm', not 'other-rm'"):
        LENGTH_DEBIASED.build("rm-debiased", other, context)


def test_calibration_job_inputs_exclude_every_evaluation_set():
    """The plan gives the job every mixture's val split and every benchmark's items to check against."""
    from pathlib import Path

    import yaml

    from rlmt.config import parse_config
    from rlmt.rewards.calibration import calibrated_rewards, calibration_inputs
    from rlmt.workflow import Plan

    raw = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    raw["reward_models"]["tiny-rm-debiased"] = {
        "kind": "length_debiased", "base": "tiny-rm", "tokenizer_model": "llama-base",
        "calibration": {"mixture": "demo", "split": "train", "policy": "llama-base__sft__nothink__demo-sft"}}
    plan = Plan(parse_config(raw))
    assert calibrated_rewards(plan.cfg) == ["tiny-rm-debiased", "tiny-rm-odin"]  # this one and the default's own, by name
    inputs = calibration_inputs(plan, "tiny-rm-debiased")
    assert inputs["prompts"] == "results/data/mixtures/demo/train.parquet"
    assert inputs["policy"] == "results/models/llama-base__sft__nothink__demo-sft"
    assert inputs["tokenizer"] == "results/models/llama-base"
    assert set(inputs["evaluation"]) == {"results/data/mixtures/demo/val.parquet",
                                         *(f"results/data/benchmarks/{b}/items.jsonl" for b in plan.benchmarks)}
    assert inputs["base_inputs"] == {"tiny-rm": "results/models/tiny-rm"}
    assert inputs["out"] == "results/rewards/tiny-rm-debiased/calibration.json"
    raw["reward_models"]["tiny-rm-debiased"]["calibration"]["policy"] = "nobody"
    with pytest.raises(ValueError, match="calibration.policy: 'nobody' is neither"):
        calibration_inputs(Plan(parse_config(raw)), "tiny-rm-debiased")


def test_reward_calibration_command_fits_a_classifier_and_refuses_evaluation_prompts(tiny_zoo, tmp_path, mlflow_uri):
    """`rlmt train reward-calibration` as the rule runs it: the base (a tiny classifier) by --reward-input."""
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from rlmt.cli import app

    raw = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    raw["reward_models"]["tiny-rm-debiased"] = {
        "kind": "length_debiased", "base": "tiny-rm", "tokenizer_model": "llama-instruct",
        "calibration": {"mixture": "demo", "policy": "llama-instruct", "n_prompts": 4, "max_new_tokens": 10,
                        "temperature": 1.0}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    prompts = _prompt_file(tmp_path / "train.jsonl", [(f"t{i}", f"Tell me about topic number {i}.") for i in range(5)])
    evaluation = _prompt_file(tmp_path / "val.jsonl", [("v1", "Name three rivers.")])
    out = tmp_path / "rewards" / "tiny-rm-debiased" / "calibration.json"
    args = ["train", "reward-calibration", "--config", str(config), "--name", "tiny-rm-debiased",
            "--prompts", str(prompts), "--policy", str(tiny_zoo["llama-instruct"]),
            "--tokenizer", str(tiny_zoo["llama-instruct"]), "--evaluation", str(evaluation),
            "--reward-input", f"tiny-rm={tiny_zoo['reward']}", "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    fit = json.loads(out.read_text())
    assert (fit["reward"], fit["base"], fit["tokenizer_model"], fit["n_prompts"]) == \
        ("tiny-rm-debiased", "tiny-rm", "llama-instruct", 4)
    assert fit["n"] + fit["n_malformed_excluded"] == 4 and abs(fit["pearson_after"] or 0.0) < 1e-9

    shared = _prompt_file(tmp_path / "val2.jsonl", [("v2", "tell me about topic NUMBER 2.")])
    refused = CliRunner().invoke(app, [*args[:-2], "--evaluation", str(shared), "--out", str(tmp_path / "x.json")])
    assert refused.exit_code == 2 and "are evaluation prompts: 't2'" in refused.output
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------- length-balanced reward-model pairs


def _pair(i: int, chosen: int, rejected: int) -> dict:
    return {"id": f"p{i}", "chosen_tokens": chosen, "rejected_tokens": rejected}


PAIRS = [_pair(0, 10, 5), _pair(1, 4, 8), _pair(2, 30, 5), _pair(3, 6, 6), _pair(4, 3, 9), _pair(5, 12, 4)]
# ratio longer/shorter: p0 2, p1 2, p2 6, p3 1, p4 3, p5 3; chosen strictly shorter: p1, p4 (2 of 6)
# chosen/rejected: p0 2, p2 6, p3 1, p5 3


def test_length_ratio_drops_lopsided_pairs():
    from rlmt.data.rm_pairs import balance_by_length

    kept, counts = balance_by_length(PAIRS, max_length_ratio=3)  # drops p2 (6 > 3)
    assert [p["id"] for p in kept] == ["p0", "p1", "p3", "p4", "p5"] and counts["dropped_length_ratio"] == 1
    kept, counts = balance_by_length(PAIRS, max_length_ratio=2)  # drops p2, p4, p5 (6, 3, 3 > 2)
    assert [p["id"] for p in kept] == ["p0", "p1", "p3"] and counts["dropped_length_ratio"] == 3
    assert counts["chosen_shorter_share_before_balance"] == pytest.approx(2 / 6)
    assert counts["chosen_shorter_share"] == pytest.approx(1 / 3)  # p1 of p0, p1, p3


def test_shorter_chosen_share_drops_the_most_lopsided_first():
    from rlmt.data.rm_pairs import balance_by_length

    # share 0.5: S = 2 (p1, p4) -> at most floor(2 * 0.5 / 0.5) = 2 others, the least lopsided: p3 (1), p0 (2);
    # p5 (3) and p2 (6) go
    kept, counts = balance_by_length(PAIRS, min_shorter_chosen_share=0.5)
    assert [p["id"] for p in kept] == ["p0", "p1", "p3", "p4"]
    assert counts["dropped_shorter_chosen_share"] == 2 and counts["chosen_shorter_share"] == 0.5
    # ratio 3 first (p2 goes), then share 0.6: S = 2 -> floor(2 * 0.4 / 0.6) = floor(1.33) = 1 other: p3
    kept, counts = balance_by_length(PAIRS, max_length_ratio=3, min_shorter_chosen_share=0.6)
    assert [p["id"] for p in kept] == ["p1", "p3", "p4"]
    assert (counts["dropped_length_ratio"], counts["dropped_shorter_chosen_share"]) == (1, 2)
    assert counts["chosen_shorter_share"] == pytest.approx(2 / 3)
    # neither option: everything kept, nothing dropped
    kept, counts = balance_by_length(PAIRS)
    assert len(kept) == 6 and counts["dropped_length_ratio"] == counts["dropped_shorter_chosen_share"] == 0


def test_balance_options_are_checked():
    from rlmt.data.rm_pairs import RMPairsConfig

    with pytest.raises(ValueError, match="max_length_ratio must be >= 1"):
        RMPairsConfig(max_length_ratio=0.5)
    with pytest.raises(ValueError, match=r"min_shorter_chosen_share must be in \(0, 1\)"):
        RMPairsConfig(min_shorter_chosen_share=1.0)
