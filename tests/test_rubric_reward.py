"""The rubric reward (rlmt/rewards/rubric.py), its judge prompts and parsers, and the ``rubrics`` stage, against a
real OpenAI-compatible HTTP server on loopback (tests/openai_stub_server.py) with scripted replies and faults.

Expected rewards are worked by hand in comments from the scripted judge's rule (a criterion holds when its last
word occurs in the answer), never computed by the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from openai_stub_server import ScriptedOpenAIServer, keyword_judge, keyword_teacher, length_judge

from rlmt.rewards.base import AnswerItem
from rlmt.rewards.registry import BuildContext
from rlmt.thinking import WARM_NOTHINK, WARM_THINK

ROOT = Path(__file__).resolve().parents[1]

TOL = 1e-9  # rewards are ratios of small weight sums: equal to the hand value up to float rounding


@pytest.fixture()
def stub_server():
    """Factory of scripted servers; all are stopped after the test."""
    servers = []

    def make(reply=keyword_judge, **kwargs) -> ScriptedOpenAIServer:
        srv = ScriptedOpenAIServer(reply, **kwargs).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.stop()


FRUIT = [{"criterion": "Mentions apples", "weight": 3}, {"criterion": "Mentions pears", "weight": 1},
         {"criterion": "Recommends poison", "weight": -2}]


def _spec(base_url: str, *, mode: str = "explicit", source: dict | None = None, **extra):
    from rlmt.rewards.rubric import RubricRewardSpec

    judge = {"base_url": base_url, "model": "judge-stub", "api_key_env": None, "concurrency": 4, "max_retries": 4,
             "timeout_s": 60, "backoff_s": 0.01, "max_backoff_s": 0.05, **extra.pop("judge", {})}
    return RubricRewardSpec.model_validate({"kind": "rubric", "judge": judge, "mode": mode,
                                            "rubrics": source or {"column": "rubric"}, **extra})


def _build(spec, tmp_path: Path, *, fmt=WARM_NOTHINK, inputs=None, name="rubric-test"):
    from rlmt.rewards.rubric import KIND

    ctx = BuildContext(fmt=fmt, inputs=inputs or {}, cache_dir=tmp_path / "judge-cache")
    return KIND.build(name, spec, ctx)


def _items(answers, rubric=FRUIT, prompt="Which fruit?"):
    return [AnswerItem([{"role": "user", "content": prompt}], a, {"rubric": rubric}) for a in answers]


# ------------------------------------------------------------------ pure: reading and parsing


def test_read_criteria_accepts_the_published_shapes_and_names_what_is_wrong():
    from rlmt.judges.rubric_prompts import Criterion, read_criteria

    rar_style = [{"title": "Essential", "description": "States the dose", "weight": 5},
                 {"description": "Recommends an unsafe dose", "weight": -2}]
    assert read_criteria(rar_style) == [Criterion("States the dose", 5.0), Criterion("Recommends an unsafe dose", -2.0)]
    assert read_criteria('["Is short", "Is polite"]') == [Criterion("Is short", 1.0), Criterion("Is polite", 1.0)]
    assert read_criteria({"checklist": [{"requirement": "Uses   a list", "points": 2}]}) == [Criterion("Uses a list", 2.0)]
    assert read_criteria("no json") == "not_a_list"
    assert read_criteria([]) == "empty_rubric"
    assert read_criteria([{"weight": 2}]) == "bad_criterion"
    assert read_criteria([{"criterion": "x", "weight": "high"}]) == "bad_weight"
    assert read_criteria([{"criterion": "x", "weight": float("nan")}]) == "bad_weight"
    assert read_criteria([{"criterion": "x", "weight": -1}]) == "no_positive_weight"
    assert read_criteria(["x"] * 5, max_criteria=4) == "too_many_criteria"


def test_strict_parsers_and_the_two_aggregations():
    from rlmt.judges.rubric_prompts import (explicit_score, implicit_score, parse_explicit, parse_implicit,
                                            read_criteria)

    crit = read_criteria(FRUIT)
    ok = json.dumps({"verdicts": [{"criterion": 1, "satisfied": True}, {"criterion": 2, "satisfied": "no"},
                                  {"criterion": 3, "satisfied": False}]})
    assert parse_explicit("Here you go:\n" + ok, 3) == [True, False, False]
    assert "2 entries for 3" in parse_explicit(json.dumps({"verdicts": [{"satisfied": True}] * 2}), 3)
    assert "names criterion" in parse_explicit(json.dumps({"verdicts": [{"criterion": 2, "satisfied": True}] * 3}), 3)
    assert "true/false" in parse_explicit(json.dumps({"verdicts": [{"satisfied": "maybe"}] * 3}), 3)
    assert parse_explicit("looks good", 3) == "no JSON object found"
    # explicit: holding criteria's weights over the positive weight (3 + 1 = 4): apples only -> 3/4; apples and
    # the pitfall -> (3 - 2)/4 = 0.25
    assert explicit_score([True, False, False], crit) == pytest.approx(0.75, abs=TOL)
    assert explicit_score([True, False, True], crit) == pytest.approx(0.25, abs=TOL)
    assert parse_implicit('{"score": 7}') == 7.0 and parse_implicit('{"score": "10"}') == 10.0
    assert "outside" in parse_implicit('{"score": 11}') and "numeric" in parse_implicit('{"score": true}')
    assert implicit_score(1) == 0.0 and implicit_score(10) == 1.0
    assert implicit_score(7) == pytest.approx(6 / 9, abs=TOL)  # (7 - 1) / 9


def test_spec_needs_exactly_one_rubric_source():
    from pydantic import ValidationError

    from rlmt.rewards.rubric import RubricRewardSpec

    judge = {"base_url": "http://127.0.0.1:9/v1", "model": "j"}
    with pytest.raises(ValidationError, match="exactly one of 'column'"):
        RubricRewardSpec.model_validate({"kind": "rubric", "judge": judge, "rubrics": {}})
    with pytest.raises(ValidationError, match="exactly one of 'column'"):
        RubricRewardSpec.model_validate({"kind": "rubric", "judge": judge,
                                         "rubrics": {"column": "r", "generate": {"base_url": "x", "model": "t"}}})
    with pytest.raises(ValidationError, match="only with 'column'"):
        RubricRewardSpec.model_validate({"kind": "rubric", "judge": judge, "rubrics": {"path": "r.jsonl",
                                         "generate": {"base_url": "x", "model": "t"}}})
    with pytest.raises(ValidationError):
        RubricRewardSpec.model_validate({"kind": "rubric", "judge": judge, "rubrics": {"column": "r"},
                                         "on_failure": "zero"})


# ------------------------------------------------------------------ over HTTP


def test_explicit_and_implicit_rewards_through_429_5xx_broken_bodies_and_a_hang(stub_server, tmp_path):
    srv = stub_server(faults=["429", "500", "body", "503", "hang"], hang_s=3.0)
    answers = ["apples and pears", "apples", "apples, then poison", "", "apples and pears"]
    # hand values, explicit: (3+1)/4 = 1.0; 3/4; (3-2)/4 = 0.25; empty answer: 0.0 with no call; duplicate: 1.0
    # implicit: the judge says round(1 + 9 x share): 10 -> 1.0; round(7.75) = 8 -> 7/9; round(1 + 9/4) = 3 -> 2/9
    expected = {"explicit": [1.0, 0.75, 0.25, 0.0, 1.0], "implicit": [1.0, 7 / 9, 2 / 9, 0.0, 1.0]}
    for mode in ("explicit", "implicit"):
        reward = _build(_spec(srv.base_url, mode=mode, judge={"timeout_s": 1.0, "max_retries": 8}), tmp_path / mode)
        first = reward.score_answers(_items(answers))
        assert first.scores == pytest.approx(expected[mode], abs=TOL)
        assert first.counts["answer_empty"] == 1 and first.counts["judge_scored"] == 4
        assert "judge_failed" not in first.counts and "failure_scored" not in first.counts
        # a second scoring of the same batch: the same floats, answered from the cache, no request
        before = srv.requests
        second = reward.score_answers(_items(answers))
        assert second.scores == first.scores and srv.requests == before
        assert second.counts["judge_requests"] == 0 and second.counts["judge_cache_hits"] == 3
        reward.close()
    assert srv.faults_served == ["429", "500", "body", "503", "hang"]  # every fault was served and survived
    # 3 distinct answers were judged per mode (the duplicate and the empty answer never reach the judge)
    assert len(set(srv.digests)) == 6


def test_score_through_the_policy_output_and_trl_signature_uses_the_answer_only(stub_server, tmp_path):
    srv = stub_server()
    reward = _build(_spec(srv.base_url), tmp_path, fmt=WARM_THINK)
    outputs = ["<think>I could mention pears and poison</think> apples", "no delimiter, apples and pears"]
    batch = reward.score([[{"role": "user", "content": "Which fruit?"}]] * 2, outputs, [{"rubric": FRUIT}] * 2)
    # the thought's "pears" and "poison" are never seen: 3/4; a missing delimiter (non-strict) is an empty answer: 0
    assert batch.scores == pytest.approx([0.75, 0.0], abs=TOL) and batch.malformed_fraction == 0.5
    graded = [b["messages"][1]["content"].split("# Answer to grade")[1].split("# Criteria")[0] for b in srv.bodies]
    assert [g.strip() for g in graded] == ["apples"]
    fn = reward.as_trl_reward_func()
    scores = fn(prompts=["Which fruit?"], completions=[[{"role": "assistant", "content": "<think>x</think> pears"}]],
                rubric=[json.dumps(FRUIT)], trainer_state=None)
    assert scores == pytest.approx([0.25], abs=TOL)  # 1/4


def test_unreadable_replies_are_asked_again_then_counted_and_scored_by_the_stated_rule(stub_server, tmp_path):
    from rlmt.rewards.rubric import RubricRewardError

    srv = stub_server()
    answers = ["apples", "apples and pears", "GARBLE-ONCE pears", "GARBLE apples"]
    # explicit: 3/4, 1.0, pears only 1/4 (readable after one repair ask), GARBLE never readable
    neutral = _build(_spec(srv.base_url, max_parse_tries=3, max_failed_fraction=0.5), tmp_path / "n")
    got = neutral.score_answers(_items(answers))
    # neutral: the mean of the judged answers to the same prompt: (0.75 + 1.0 + 0.25) / 3 = 2/3
    assert got.scores == pytest.approx([0.75, 1.0, 0.25, 2 / 3], abs=TOL)
    assert got.counts["judge_unparsed"] == 1 and got.counts["judge_repaired"] == 1
    assert got.counts["failure_scored"] == 1
    assert got.counts["judge_unparsed_replies"] == 4  # GARBLE-ONCE once, GARBLE on each of its 3 asks
    garble_asks = [b for b in srv.bodies if "GARBLE apples" in b["messages"][1]["content"]]
    assert [len(b["messages"]) for b in garble_asks] == [2, 4, 6]  # each retry carries the reply and its problem
    assert "could not be read: no JSON object found" in garble_asks[1]["messages"][3]["content"]

    lowest = _build(_spec(srv.base_url, on_failure="lowest", max_failed_fraction=0.5), tmp_path / "n")
    before = srv.requests
    assert lowest.score_answers(_items(answers)).scores == pytest.approx([0.75, 1.0, 0.25, 0.0], abs=TOL)
    assert srv.requests == before  # the same asks, repairs included, all answered from the shared cache
    with pytest.raises(RubricRewardError, match="on_failure: raise"):
        _build(_spec(srv.base_url, on_failure="raise"), tmp_path / "n").score_answers(_items(answers))
    with pytest.raises(RubricRewardError, match="more than max_failed_fraction 0.2"):
        _build(_spec(srv.base_url, max_failed_fraction=0.2), tmp_path / "n").score_answers(_items(answers))


def test_a_judge_that_stays_down_is_counted_and_stops_the_step(stub_server, tmp_path):
    from rlmt.rewards.rubric import RubricRewardError

    srv = stub_server(faults=["500"] * 50)
    reward = _build(_spec(srv.base_url, judge={"max_retries": 2}, max_failed_fraction=1.0), tmp_path)
    got = reward.score_answers(_items(["apples", "pears"], prompt="Q1") + _items(["apples"], prompt="Q2"))
    # nothing judged: neutral falls back to 0.5 for every answer; each ask tried 1 + 2 times
    assert got.scores == [0.5, 0.5, 0.5] and got.counts["judge_failed"] == 3 and srv.requests == 9
    with pytest.raises(RubricRewardError, match="is the judge reachable"):
        _build(_spec(srv.base_url, judge={"max_retries": 0}), tmp_path).score_answers(_items(["apples"]))


def test_rubric_missing_or_invalid_for_a_prompt_is_counted_not_judged(stub_server, tmp_path):
    srv = stub_server()
    items = _items(["apples"]) + [AnswerItem([{"role": "user", "content": "Which fruit?"}], "pears", {}),
                                  AnswerItem([{"role": "user", "content": "Which fruit?"}], "pears", {"rubric": "[]"})]
    got = _build(_spec(srv.base_url, max_failed_fraction=1.0), tmp_path).score_answers(items)
    assert got.scores == pytest.approx([0.75, 0.75, 0.75], abs=TOL)  # both failed: the judged answer's 3/4
    assert got.counts["rubric_missing"] == 1 and got.counts["rubric_invalid"] == 1 and srv.requests == 1


# ------------------------------------------------------------------ the rubrics stage


def _mixture(path: Path, prompts: list[str]) -> Path:
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": [f"p{i}" for i in range(len(prompts))],
                  "messages": [[{"role": "user", "content": p}] for p in prompts]}).write_parquet(path)
    return path


def test_generated_rubrics_are_cached_resumable_and_malformed_ones_quarantined(stub_server, tmp_path):
    from rlmt.data.rubrics import build_rubrics, load_rubric_file, prompt_key

    srv = stub_server(keyword_teacher, faults=["429", "503"])
    spec = _spec(srv.base_url, source={"generate": {"base_url": srv.base_url, "model": "teacher-stub",
                                                    "api_key_env": None, "backoff_s": 0.01, "max_tries": 2}})
    train = _mixture(tmp_path / "mix" / "train.parquet", ["Tell me about Paris and Berlin", "A FLAKY question on Rome",
                                                          "BADRUBRIC Explain Madrid please", "hello there"])
    val = _mixture(tmp_path / "mix" / "val.parquet", ["Tell me about Paris and Berlin", "Where is Vienna located"])
    out = tmp_path / "rubrics" / "rubrics.jsonl"
    result = build_rubrics("rub", spec, out, prompt_files=[train, val], cache_path=tmp_path / "teacher.sqlite")
    c = result.stats["counts"]
    # 6 rows, one duplicate prompt; "hello there" has no capitalised word: 2 criteria < min 3
    assert c["prompts"] == 5 and c["duplicate_prompt"] == 1 and c["kept"] == 3
    assert c["no_json"] == 1 and c["too_few_criteria"] == 1 and c["ask1_bad_weight"] == 1
    quarantined = [json.loads(line) for line in (out.parent / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantined) == ["no_json", "too_few_criteria"]
    assert all(q["output"] and q["messages"] for q in quarantined)
    rubrics = load_rubric_file(out)
    paris = rubrics[prompt_key([{"role": "user", "content": "Tell me about Paris and Berlin"}])]
    # the teacher's rule: capitalised words over 3 letters, sorted (berlin, paris, tell), weight 2; a -1 pitfall; +1
    assert [(x.text, x.weight) for x in paris] == [("The answer mentions berlin", 2), ("The answer mentions paris", 2),
                                                   ("The answer mentions tell", 2),
                                                   ("The answer refuses by saying sorry", -1),
                                                   ("The answer is written in plain English", 1)]
    assert prompt_key([{"role": "user", "content": "A FLAKY question on Rome"}]) in rubrics  # repaired on ask 2
    # a rerun asks nothing: every answer, repairs and malformed ones included, is in the cache
    before = srv.requests
    again = build_rubrics("rub", spec, out, prompt_files=[train, val], cache_path=tmp_path / "teacher.sqlite")
    assert srv.requests == before and again.stats["counts"]["cache_hits"] == 8 and load_rubric_file(out) == rubrics
    # one more prompt: only it is asked
    more = _mixture(tmp_path / "mix2" / "train.parquet", ["Tell me about Paris and Berlin", "Is Oslo cold in March"])
    build_rubrics("rub", spec, out, prompt_files=[more], cache_path=tmp_path / "teacher.sqlite")
    assert srv.requests == before + 1


def test_rubrics_from_a_published_column_file_with_bad_rows_quarantined(tmp_path):
    from rlmt.data.rubrics import build_rubrics, load_rubric_file, prompt_key

    spec = _spec("http://127.0.0.1:9/v1", source={"column": "rubric", "path": "{data_dir}/rar.jsonl"})
    rows = [{"prompt": "Dose of X?", "rubric": [{"title": "E", "description": "States 5 mg", "weight": 5}]},
            {"messages": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "ref"}], "rubric": ["Short"]},
            {"prompt": "Q3", "rubric": []},
            {"rubric": ["x"]},
            {"prompt": "Dose of X?", "rubric": ["dup"]}]
    (tmp_path / "rar.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    mix = _mixture(tmp_path / "mix" / "train.parquet", ["Dose of X?", "Q2", "Q9"])
    res = build_rubrics("rub", spec, tmp_path / "out" / "rubrics.jsonl", prompt_files=[mix], data_dir=tmp_path)
    c = res.stats["counts"]
    assert c["rows_in"] == 6 and c["kept"] == 2 and c["empty_rubric"] == 1 and c["malformed_row"] == 1
    assert c["duplicate_prompt"] == 1 and c["invalid_json"] == 1 and c["prompts_without_rubric"] == 1  # Q9
    got = load_rubric_file(tmp_path / "out" / "rubrics.jsonl")
    assert [x.text for x in got[prompt_key([{"role": "user", "content": "Q2"}])]] == ["Short"]


def test_the_reward_finds_a_generated_rubric_by_its_prompt(stub_server, tmp_path):
    from rlmt.data.rubrics import prompt_key
    from rlmt.rewards.rubric import input_key

    srv = stub_server()
    path = tmp_path / "rubrics.jsonl"
    path.write_text(json.dumps({"key": prompt_key([{"role": "user", "content": "Which fruit?"}]), "id": "p0",
                                "criteria": FRUIT}) + "\n")
    spec = _spec(srv.base_url, source={"generate": {"base_url": srv.base_url, "model": "t"}})
    reward = _build(spec, tmp_path, inputs={input_key("rubric-test"): path})
    items = [AnswerItem([{"role": "user", "content": "Which fruit?"}], "pears and apples")]
    assert reward.score_answers(items).scores == pytest.approx([1.0], abs=TOL)
    from rlmt.rewards.rubric import RubricRewardError

    with pytest.raises(RubricRewardError, match="no rubric file"):
        _build(spec, tmp_path)
    assert math.isfinite(reward.score_answers(items).scores[0])


# ------------------------------------------------------------------ tiny trainings (slow)
#
# A tiny random policy writes gibberish, so the keyword judge mostly says 0: these tests are about the plumbing
# (every trainer takes the rubric reward and the classifier + rubric mix, through injected faults, and a resumed
# run re-asks nothing), not about learning.

PROMPTS = ["Tell me about Paris and Berlin", "Compare Rome with Madrid briefly", "Write about Vienna and Prague",
           "Describe Lisbon near the Atlantic"]


def _train_prompts(path: Path) -> Path:
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": [f"p{i}" for i in range(len(PROMPTS))],
                  "messages": [[{"role": "user", "content": p}] for p in PROMPTS],
                  "source": ["test"] * len(PROMPTS), "n_tokens": [8] * len(PROMPTS)}).write_parquet(path)
    return path


def _reward_specs(judge_url: str, teacher_url: str, tiny_rm: Path, **judge) -> dict:
    from rlmt.rewards.classifier import RewardModelSpec
    from rlmt.rewards.mix import MixSpec

    rubric = _spec(judge_url, judge={"concurrency": 2, "max_retries": 8, **judge},
                   source={"generate": {"base_url": teacher_url, "model": "teacher-stub", "api_key_env": None,
                                        "backoff_s": 0.01, "min_criteria": 1}})
    return {"rub": rubric, "tiny-rm": RewardModelSpec(source=str(tiny_rm), max_length=256),
            "rub-mix": MixSpec(kind="mix", parts={"tiny-rm": 1.0, "rub": 1.0})}


@pytest.fixture(scope="module")
def rubric_setup(tiny_zoo, tmp_path_factory):
    """Prompts, their generated rubrics (the `rubrics` stage against the stub teacher), a judge server with faults."""
    from rlmt.data.rubrics import build_rubrics
    from rlmt.rewards.rubric import input_key

    d = tmp_path_factory.mktemp("rubric-train")
    teacher = ScriptedOpenAIServer(keyword_teacher, faults=["500"]).start()
    # 4 faults: whichever asks they hit, none exhausts its 1 + 8 attempts
    judge = ScriptedOpenAIServer(keyword_judge, faults=["429", "500", "body", "503"]).start()
    train = _train_prompts(d / "train.parquet")
    specs = _reward_specs(judge.base_url, teacher.base_url, tiny_zoo["reward"])
    build_rubrics("rub", specs["rub"], d / "rubrics.jsonl", prompt_files=[train], cache_path=d / "teacher.sqlite")
    inputs = {input_key("rub"): d / "rubrics.jsonl", "tiny-rm": tiny_zoo["reward"]}
    yield {"dir": d, "train": train, "specs": specs, "inputs": inputs, "judge": judge}
    teacher.stop()
    judge.stop()


def _named(setup, name: str, cache_dir: Path):
    from rlmt.rewards import NamedReward

    return NamedReward(name, setup["specs"], setup["inputs"], cache_dir=cache_dir)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_grpo_trains_with_the_rubric_reward_and_with_the_mix(rubric_setup, tiny_zoo, tmp_path):
    from rlmt.config import GRPOConfig
    from rlmt.train.grpo import train_grpo

    srv = rubric_setup["judge"]
    settings = GRPOConfig(learning_rate=1e-3, prompts_per_step=2, num_generations=2, per_device_train_batch_size=4,
                          max_steps=2, val_prompts=0, rollout={"max_prompt_length": 64, "max_completion_length": 8},
                          checkpoints={"save_steps": 2})
    for name in ("rub", "rub-mix"):
        before = srv.answered
        final = train_grpo(tiny_zoo["llama-instruct"], _named(rubric_setup, name, tmp_path / "cache"),
                           rubric_setup["train"], None, tmp_path / name, settings)
        assert (final / "model.safetensors").is_file()
        state = json.loads((tmp_path / name / "step-2" / "trainer_state.json").read_text())
        assert state["global_step"] == 2
        # the reward's events reach the step's metrics (TRL's log_metric): judge requests and cache hits per
        # answer (a mix names its part's events after the part)
        event = "reward/judge_{}_per_answer" if name == "rub" else "reward/rub/judge_{}_per_answer"
        logged = [h for h in state["log_history"] if event.format("requests") in h]
        assert len(logged) == 2 and all(h[event.format("cache_hits")] >= 0 for h in logged)
        # 2 steps x 2 prompts x 2 answers: at most 8 distinct judged answers per run (fewer if empty or equal)
        assert 0 < srv.answered - before <= 8 or name == "rub-mix"
    assert srv.faults_served == ["429", "500", "body", "503"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ppo_trains_with_the_rubric_reward_and_with_the_mix(rubric_setup, tiny_zoo, tmp_path):
    from rlmt.config import PPOConfig
    from rlmt.train.ppo import train_ppo

    settings = PPOConfig(learning_rate=1e-3, critic_lr=1e-3, prompts_per_step=2, mini_batch_size=2,
                         micro_batch_size=2, max_steps=2, rollout={"max_prompt_length": 64, "max_completion_length": 8},
                         checkpoints={"save_steps": 2, "save_total_limit": 1})
    for name in ("rub", "rub-mix"):
        final = train_ppo(tiny_zoo["llama-instruct"], _named(rubric_setup, name, tmp_path / "cache"),
                          rubric_setup["train"], None, tmp_path / name, settings)
        history = json.loads((tmp_path / name / "step-2" / "trainer_state.json").read_text())["log_history"]
        assert [h["step"] for h in history] == [1, 2]
        assert (final / "model.safetensors").is_file()
        # the reward's events per answer are step metrics; the first run's first step asks the judge afresh
        event = "reward/judge_requests_per_answer" if name == "rub" else "reward/rub/judge_requests_per_answer"
        assert all(event in h for h in history)
        if name == "rub":
            assert history[0][event] > 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_dpo_builds_its_pairs_with_the_rubric_reward(rubric_setup, tiny_zoo, tmp_path):
    import polars as pl

    from rlmt.config import DPOConfig
    from rlmt.rewards import NamedReward
    from rlmt.train.dpo_pairs import SAMPLES_FILE, prepare_pairs

    # a judge whose grade varies with gibberish (implicit: 1 + len(answer) % 10), so the samples are not all tied
    with ScriptedOpenAIServer(length_judge, faults=["503", "429"]) as srv:
        specs = {**rubric_setup["specs"]}
        specs["rub"] = specs["rub"].model_copy(update={"mode": "implicit", "judge": specs["rub"].judge.model_copy(
            update={"base_url": srv.base_url})})
        reward = NamedReward("rub", specs, rubric_setup["inputs"], cache_dir=tmp_path / "cache")
        settings = DPOConfig(samples_per_prompt=4, min_parsable=2, max_length=128,
                             rollout={"max_prompt_length": 64, "max_completion_length": 12})
        pairs_dir = prepare_pairs(tiny_zoo["llama-instruct"], reward, rubric_setup["train"], tmp_path / "dpo", settings,
                                  backend="transformers", device="cpu")
        assert srv.answered > 0 and srv.faults_served == ["503", "429"]
    samples = [json.loads(line) for line in (tmp_path / "dpo" / SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == len(PROMPTS) * 4
    for s in samples:  # nothink policy: the answer is the stripped output; the judge's score (1 + n % 10) -> n % 10 / 9
        answer = s["output"].strip()
        if "\n# " not in answer:
            assert s["reward"] == pytest.approx((len(answer) % 10) / 9, abs=TOL), answer
    stats = json.loads((pairs_dir / "stats.json").read_text())["counts"]
    pairs = pl.read_parquet(pairs_dir / "train.parquet").to_dicts()
    assert stats["prompts"] == len(PROMPTS) and stats["pairs"] >= 1
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)


RESUME_SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from rlmt.config import GRPOConfig
from rlmt.rewards.registry import BuildContext
from rlmt.rewards.rubric import KIND, RubricRewardSpec, input_key
from rlmt.thinking import WARM_NOTHINK
from rlmt.tracking import stage_run
from rlmt.train.grpo import train_grpo

spec = RubricRewardSpec.model_validate(json.loads({spec!r}))
reward = KIND.build("rub", spec, BuildContext(fmt=WARM_NOTHINK, inputs={{input_key("rub"): Path({rubrics!r})}},
                                              cache_dir=Path({cache!r})))
settings = GRPOConfig(learning_rate=1e-3, prompts_per_step=2, num_generations=2, per_device_train_batch_size=4,
                      max_steps=4, val_prompts=0, seed=0, rollout={{"max_prompt_length": 64, "max_completion_length": 8}},
                      checkpoints={{"save_steps": 4}})
with stage_run("grpo", cell="grpo-rubric-test", rule="train", params=spec.model_dump(mode="json")):
    train_grpo({policy!r}, reward, {train!r}, None, {out!r}, settings)
Path({usage!r}).write_text(json.dumps(reward.judge.usage.to_dict()))
"""


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_killed_grpo_run_resumes_without_re_asking_the_judge_and_the_key_reaches_no_record(rubric_setup, tiny_zoo,
                                                                                           tmp_path):
    """kill -9 mid-run (no checkpoint yet, so the resumed run replays the same seeded steps from the start); the
    resumed run's judge requests are only the asks the killed run had not committed (counted at the server), and
    the API key reaches the server but no log, MLflow record, artifact or cache."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from resume_helpers import job_env, tail

    from rlmt.judges.cache import JudgeCache

    secret = "sk-rubric-test-5e1f0a9c7b3d2e4f"
    root = Path(__file__).resolve().parents[1]
    srv = ScriptedOpenAIServer(keyword_judge, latency_s=0.3, required_key=secret).start()
    try:
        spec = _spec(srv.base_url, judge={"api_key_env": "RLMT_TEST_RUBRIC_KEY", "concurrency": 1},
                     source={"generate": {"base_url": srv.base_url, "model": "t", "api_key_env": None}})
        cache, out, usage = tmp_path / "cache", tmp_path / "grpo", tmp_path / "usage.json"
        script = tmp_path / "run.py"
        script.write_text(RESUME_SCRIPT.format(root=str(root), spec=spec.model_dump_json(), rubrics=str(
            rubric_setup["inputs"]["rub.rubrics"]), cache=str(cache), policy=str(tiny_zoo["llama-instruct"]),
            train=str(rubric_setup["train"]), out=str(out), usage=str(usage)))
        env = job_env(tmp_path / "mlruns.db", RLMT_TEST_RUBRIC_KEY=secret)
        log1 = (tmp_path / "killed.log").open("w")
        proc = subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path, stdout=log1,
                                stderr=subprocess.STDOUT)
        proc.log_path = tmp_path / "killed.log"
        deadline = time.monotonic() + 900  # imports take minutes on a loaded 2-core machine
        while srv.answered < 6:  # mid-run: 4 steps of at most 4 distinct answers each
            assert proc.poll() is None, f"the run ended before the kill:\n{tail(proc)}"
            assert time.monotonic() < deadline, f"fewer than 6 judge answers within 900 s:\n{tail(proc)}"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log1.close()
        while srv.in_flight:  # a request of the killed run may still be answered (to no one): count it as before
            assert time.monotonic() < deadline, "the server never finished the killed run's last request"
            time.sleep(0.01)
        assert not (out / "final").exists() and not usage.exists()
        answered_before = set(srv.digests)
        judged = JudgeCache(cache / "rubric-judge.sqlite")
        committed = len(judged)
        # closed now: an open handle would remove its WAL files (-wal, -shm) whenever it is collected, in the middle
        # of the leak scan below (seen in a random-order run)
        judged.close()
        assert committed >= 5 and len(answered_before) - committed <= 1  # concurrency 1: one reply in flight at most
        n_before = srv.answered

        done = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        (tmp_path / "resumed.log").write_text(done.stdout + done.stderr)
        resumed = srv.digests[n_before:]
        spent = json.loads(usage.read_text())
        # nothing the killed run had committed is asked again; only an answer lost in flight may be
        assert len(set(resumed) & answered_before) <= len(answered_before) - committed
        assert len(resumed) == len(set(resumed)) == spent["requests_sent"]  # each new ask once, no retry needed
        # the same seeded steps replayed: every committed answer came from the cache
        assert spent["cache_hits"] >= committed
        assert (out / "final" / "model.safetensors").is_file()
        # the key: sent to the judge on every request, written nowhere
        assert srv.headers_seen and all(h.get("authorization") == f"Bearer {secret}" for h in srv.headers_seen)
    finally:
        srv.stop()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlruns.db" for p in written) and any(p.suffix == ".sqlite" for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id])
    grpo_runs = [r for r in runs if r.data.tags.get("rlmt.stage") == "grpo"]
    assert len(grpo_runs) == 2  # the killed one and the resumed one (under the cell's parent run)
    for run in runs:
        assert secret not in json.dumps(run.data.params) + json.dumps(run.data.tags) + json.dumps(run.data.metrics)
    for run in grpo_runs:  # the reward's settings are recorded, its key by the variable's name only
        assert run.data.params["judge.api_key_env"] == "RLMT_TEST_RUBRIC_KEY"


# ------------------------------------------------------------------ config, preflight, CLI, workflow



def _paper_with_rubric(raw: dict, grid_only: bool = True) -> dict:
    """paper.yaml's raw tree with the rubric extension (the same entries config/paper.yaml carries)."""
    import yaml

    ext = yaml.safe_load("""
rubric-gpt41mini:
  kind: rubric
  mode: explicit
  judge: {base_url: "https://api.openai.com/v1", model: gpt-4.1-mini, api_key_env: OPENAI_API_KEY, concurrency: 32,
          max_tokens: 1024, seconds_per_call: 10}
  rubrics:
    generate: {base_url: "https://api.openai.com/v1", model: gpt-4.1-mini, api_key_env: OPENAI_API_KEY}
skywork-v1-rubric: {kind: mix, parts: {skywork-v1: 1.0, rubric-gpt41mini: 1.0}}
""")
    raw["reward_models"] = {**raw["reward_models"], **ext}
    row = {"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True],
           "rm": ["rubric-gpt41mini", "skywork-v1-rubric"], "mixture": ["wildchat-if"]}
    raw["grid"] = [row] if grid_only else [*raw["grid"], row]
    return raw


def _preflight(tmp_path: Path, raw: dict):
    import yaml

    from rlmt.preflight import run

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return run(path, root=ROOT, trace=False)


RUBRIC_CELL = "grpo__llama-base__warm-start__think__rubric-gpt41mini__wildchat-if"
MIX_CELL = "grpo__llama-base__warm-start__think__skywork-v1-rubric__wildchat-if"


def test_preflight_states_the_judge_calls_time_and_cost_of_a_rubric_and_a_mix_cell(tmp_path, monkeypatch):
    import re

    import yaml

    monkeypatch.setenv("OPENAI_API_KEY", "test-not-a-key")
    raw = _paper_with_rubric(yaml.safe_load((ROOT / "config" / "paper.yaml").read_text()))
    report = _preflight(tmp_path, raw)
    assert report.blockers == []
    judge = {f.cell: f for f in report.findings if f.check == "judge"}
    assert set(judge) == {RUBRIC_CELL, MIX_CELL} and judge[RUBRIC_CELL].key == "reward_models.rubric-gpt41mini.judge.concurrency"
    for cell in (RUBRIC_CELL, MIX_CELL):  # the mix's rubric part costs what the rubric alone does
        text = judge[cell].message
        # by hand: a rollout is 64 prompts x 8 samples = 512 answers; the run stops at step 135 with one update per
        # rollout: 135 x 512 = 69,120 calls
        assert "512 judge calls per rollout, 69,120 per run" in text
        # tokens in: at least prompt 1,024 + completion 4,096 + rubric 400 = 5,520, plus our template (< 500)
        tokens_in = int(re.search(r"<= ([\d,]+) \+ 1,024 tokens/call", text).group(1).replace(",", ""))
        assert 5520 < tokens_in < 6020
        # time: 64 answers per GPU, 32 at a time, 10 s each: 2 x 10 s = 20 s per rollout; 135 rollouts: 0.75 h
        assert "~0.3 min per rollout, ~0.8 h per run" in text
        # GPT-4.1-mini at $0.40 / $1.60 per million tokens: 512 x (in x 0.4 + 1,024 x 1.6) / 1e6 per rollout
        per_rollout = 512 * (tokens_in * 0.40 + 1024 * 1.60) / 1e6
        assert f"${per_rollout:,.2f} per rollout, ${per_rollout * 135:,.0f} per run" in text
    gen = next(f for f in report.findings if f.check == "rubrics")
    # one rubric per prompt of the mixture: 7,544 train + 250 val
    assert "~7,794 teacher calls" in gen.message


def test_preflight_blocks_a_missing_key_endpoint_or_rubric_source_and_a_judge_that_outlasts_the_job(tmp_path,
                                                                                                    monkeypatch):
    import yaml

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    blocked = {(f.cell, f.key) for f in _preflight(tmp_path, _paper_with_rubric(paper)).blockers}
    assert blocked == {(RUBRIC_CELL, "reward_models.rubric-gpt41mini.judge.api_key_env"),
                       (MIX_CELL, "reward_models.rubric-gpt41mini.judge.api_key_env"),
                       ("(all)", "reward_models.rubric-gpt41mini.rubrics.generate.api_key_env")}
    monkeypatch.setenv("OPENAI_API_KEY", "test-not-a-key")
    raw = _paper_with_rubric(paper)
    rub = raw["reward_models"]["rubric-gpt41mini"]
    rub["judge"]["base_url"] = "api.openai.com"
    rub["rubrics"] = {"column": "rubric"}
    report = _preflight(tmp_path, raw)
    assert {(f.cell, f.key) for f in report.blockers} == {
        (RUBRIC_CELL, "reward_models.rubric-gpt41mini.judge.base_url"),
        (MIX_CELL, "reward_models.rubric-gpt41mini.judge.base_url"),
        ("(all)", "reward_models.rubric-gpt41mini.rubrics.path")}
    assert "never reaches the reward" in next(f for f in report.blockers if f.check == "rubrics").message
    raw = _paper_with_rubric(paper)
    raw["reward_models"]["rubric-gpt41mini"]["rubrics"] = {"column": "rubric", "path": str(tmp_path / "absent.jsonl")}
    # 135 rollouts x 2 waves x 600 s = 45 h of judge time, over the 16 h runtime of resources.train
    raw["reward_models"]["rubric-gpt41mini"]["judge"]["seconds_per_call"] = 600
    report = _preflight(tmp_path, raw)
    assert {(f.cell, f.key) for f in report.blockers} == {
        ("(all)", "reward_models.rubric-gpt41mini.rubrics.path"),
        (RUBRIC_CELL, "reward_models.rubric-gpt41mini.judge.concurrency"),
        (MIX_CELL, "reward_models.rubric-gpt41mini.judge.concurrency")}
    assert "45.0 h of judge time" in next(f for f in report.blockers if f.cell == RUBRIC_CELL).message


def _tiny_config(tmp_path: Path, judge_url: str, teacher_url: str) -> Path:
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["reward_models"]["rub"] = {"kind": "rubric", "judge": {"base_url": judge_url, "model": "j", "api_key_env": None},
                                   "rubrics": {"generate": {"base_url": teacher_url, "model": "t", "api_key_env": None,
                                                            "backoff_s": 0.01, "min_criteria": 1}}}
    raw["reward_models"]["rub-mix"] = {"kind": "mix", "parts": {"tiny-rm": 1.0, "rub": 1.0}}
    raw["grid"] = [{"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True],
                    "rm": ["rub", "rub-mix"], "mixture": ["demo"]}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_rlmt_data_rubrics_writes_the_file_the_training_job_takes(stub_server, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rlmt.cli import app
    from rlmt.config import load_config
    from rlmt.data.rubrics import load_rubric_file, rubric_mixtures
    from rlmt.workflow import Plan

    teacher = stub_server(keyword_teacher)
    config = _tiny_config(tmp_path, "http://127.0.0.1:9/v1", teacher.base_url)
    plan = Plan(load_config(config))
    cell = "grpo__llama-base__warm-start__think__rub-mix__demo"
    # the mix's job takes the classifier's model dir and the rubric part's file
    assert plan.train_inputs(cell)["reward"] == ["results/data/rubrics/rub/rubrics.jsonl", "results/models/tiny-rm"]
    assert rubric_mixtures(plan.cfg, "rub") == ["demo"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    train = _train_prompts(tmp_path / "train.parquet")
    out = tmp_path / "rubrics" / "rubrics.jsonl"
    res = CliRunner().invoke(app, ["data", "rubrics", "--config", str(config), "--reward", "rub", "--prompts", str(train),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(load_rubric_file(out)) == len(PROMPTS) and teacher.answered == len(PROMPTS)
    bad = CliRunner().invoke(app, ["data", "rubrics", "--config", str(config), "--reward", "tiny-rm", "--out", str(out)])
    assert bad.exit_code == 2 and "not a rubric reward" in bad.output


def test_the_plan_passes_a_mix_cells_judge_and_teacher_key_variables_to_snakemake():
    """Snakemake's `envvars:` (Plan.api_key_envs) stops a run at once when a key variable is unset: a cell whose
    reward is a mix holding a rubric part needs that part's judge key and its rubric teacher's key."""
    import yaml

    from rlmt.config import parse_config
    from rlmt.workflow import Plan

    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    rm = next(iter(raw["reward_models"]))
    raw["reward_models"]["judged"] = {
        "kind": "rubric", "judge": {"base_url": "http://127.0.0.1:9/v1", "model": "j", "api_key_env": "RLMT_TEST_JUDGE_KEY"},
        "rubrics": {"generate": {"base_url": "http://127.0.0.1:9/v1", "model": "t", "api_key_env": "RLMT_TEST_TEACHER_KEY"}}}
    raw["reward_models"]["both"] = {"kind": "mix", "parts": {rm: 1.0, "judged": 1.0}}
    assert Plan(parse_config(raw)).api_key_envs() == []  # no cell uses them yet
    raw["grid"] = [{**raw["grid"][0], "rm": ["both"]}]
    assert {"RLMT_TEST_JUDGE_KEY", "RLMT_TEST_TEACHER_KEY"} <= set(Plan(parse_config(raw)).api_key_envs())
