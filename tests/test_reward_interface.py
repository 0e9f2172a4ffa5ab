"""The reward interface (issue 33): one AnswerReward object per reward, answer-only by construction,
selected by ``reward_models.<name>.kind``; the mix kind's batch normalisation; the config and the
workflow reading rewards by name."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from rlmt.rewards import AnswerItem, AnswerReward, NamedReward, RuleReward, Scored, build_reward, reward_inputs
from rlmt.rewards.mix import MixReward, batch_z
from rlmt.thinking import WARM_NOTHINK, WARM_THINK

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "Say something."}]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _by_answer(table: dict[str, float]) -> RuleReward:
    """A rule part whose score is looked up by the extracted answer."""
    return RuleReward(WARM_NOTHINK, lambda item: table[item.answer])


def _raw_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def _with_rewards(raw: dict, **entries) -> dict:
    raw = copy.deepcopy(raw)
    raw["reward_models"].update(entries)
    return raw


# ----------------------------------------------------------------------------- the mix rule, by hand


def test_batch_z_is_the_population_z_score_and_zero_for_a_constant_part():
    # [0, 0, 2, 2]: mean 1, population variance (1+1+1+1)/4 = 1, std 1 -> [-1, -1, 1, 1]
    assert batch_z([0.0, 0.0, 2.0, 2.0]) == pytest.approx([-1.0, -1.0, 1.0, 1.0], abs=1e-12)
    # [1, 3]: mean 2, variance (1+1)/2 = 1 -> [-1, 1] (the sample std, /(n-1), would give +-0.707)
    assert batch_z([1.0, 3.0]) == pytest.approx([-1.0, 1.0], abs=1e-12)
    # all equal, 0.1 three times included (its float mean is not exactly 0.1): std 0 -> zeros, never +-1
    assert batch_z([0.1, 0.1, 0.1]) == [0.0, 0.0, 0.0]
    assert batch_z([5.0]) == [0.0] and batch_z([]) == []


def test_mix_is_the_weighted_sum_of_batch_normalised_parts():
    answers = ["w", "x", "y", "z"]
    a = _by_answer(dict(zip(answers, [0.0, 0.0, 2.0, 2.0])))     # z = [-1, -1, 1, 1]
    b = _by_answer(dict(zip(answers, [10.0, 20.0, 30.0, 40.0])))  # mean 25, var (225+25+25+225)/4 = 125,
    # std 5*sqrt(5): z = [-15, -5, 5, 15] / (5 sqrt 5) = [-3, -1, 1, 3] / sqrt(5)
    c = _by_answer(dict(zip(answers, [7.0] * 4)))                 # constant: contributes 0 whatever its weight
    mix = MixReward(WARM_NOTHINK, {"a": a, "b": b, "c": c}, {"a": 1.0, "b": 2.0, "c": 3.0})
    r5 = math.sqrt(5)
    expected = [-1 - 6 / r5, -1 - 2 / r5, 1 + 2 / r5, 1 + 6 / r5]  # a + 2 b + 3 * 0
    batch = mix.score([PROMPT] * 4, answers)
    assert batch.scores == pytest.approx(expected, abs=1e-12)
    # batch-relative: the same answer "w" scores differently beside other answers ([0, 2] -> z -1 for a;
    # [10, 40] -> z -1 for b: -1 + 2 * -1)
    assert mix.score([PROMPT] * 2, ["w", "z"]).scores == pytest.approx([-3.0, 3.0], abs=1e-12)


# ----------------------------------------------------------------------------- answer-only, one extraction


class Recording(RuleReward):
    """A rule reward that keeps every item it was given."""

    def __init__(self, fmt, value: float = 1.0):
        super().__init__(fmt, lambda item: value)
        self.seen: list[AnswerItem] = []

    def score_answers(self, items, *, progress=False) -> Scored:
        self.seen += list(items)
        return super().score_answers(items, progress=progress)


def test_a_reward_sees_only_answers_and_a_mix_extracts_once(monkeypatch):
    import rlmt.rewards.base as base

    calls = []
    real_extract = base.extract
    monkeypatch.setattr(base, "extract", lambda *a, **k: calls.append(a[0]) or real_extract(*a, **k))
    parts = {"p": Recording(WARM_THINK), "q": Recording(WARM_THINK, 2.0)}
    mix = MixReward(WARM_THINK, parts, {"p": 1.0, "q": 1.0})
    outputs = ["<think>SECRET plan one</think>first answer", "<think>SECRET plan two</think>second answer",
               "<think>SECRET never closed"]
    batch = mix.score([PROMPT] * 3, outputs, [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    assert len(calls) == 3  # one extraction per output, not one per part
    for part in parts.values():
        # a thought that never closes has no answer: "" (not strict), never the thought's text
        assert [i.answer for i in part.seen] == ["first answer", "second answer", ""]
        assert all("SECRET" not in i.answer for i in part.seen)
        assert [i.extras["id"] for i in part.seen] == ["a", "b", "c"]
    assert [e.thought for e in batch.extractions][:2] == ["SECRET plan one", "SECRET plan two"]
    assert batch.malformed_fraction == pytest.approx(1 / 3)


def test_the_trl_reward_function_passes_dataset_columns_as_extras_and_keeps_trl_names():
    seen = Recording(WARM_NOTHINK)
    fn = seen.as_trl_reward_func()
    scores = fn(prompts=["hi", [{"role": "user", "content": "yo"}]], completions=["a", [{"role": "assistant",
                                                                                        "content": "b"}]],
                id=["p0", "p1"], trainer_state=object(), completion_ids=[[1], [2]])
    assert scores == [1.0, 1.0] and fn.last_batch.scores == [1.0, 1.0]
    assert [i.extras for i in seen.seen] == [{"id": "p0"}, {"id": "p1"}]
    assert [i.prompt for i in seen.seen] == [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]


# ----------------------------------------------------------------------------- the classifier and its mix


@pytest.fixture(scope="module")
def specs():
    from pydantic import TypeAdapter

    from rlmt.rewards import spec_type

    return TypeAdapter(dict[str, spec_type()]).validate_python({
        "rm-a": {"source": "tiny:reward", "max_tokens_per_batch": 256},
        "rm-b": {"kind": "classifier", "source": "tiny:reward"},
        "both": {"kind": "mix", "parts": {"rm-a": 1.0, "rm-b": 0.5}},
    })


@pytest.fixture(scope="module")
def rewards(tiny_zoo, specs):
    inputs = {"rm-a": tiny_zoo["reward"], "rm-b": tiny_zoo["reward"]}
    built = {name: NamedReward(name, specs, inputs).build(WARM_NOTHINK, device="cpu") for name in ("rm-a", "both")}
    yield built
    for reward in built.values():
        reward.close()


OUTPUTS = ["A careful answer with detail.", "no", "A careful answer with detail.", "Three points: one, two, three.",
           "maybe later"]


@pytest.mark.parametrize("name", ["rm-a", "both"])
def test_the_same_batch_scored_twice_gives_the_same_floats(rewards, name):
    reward = rewards[name]
    assert isinstance(reward, AnswerReward) and reward.kind == {"rm-a": "classifier", "both": "mix"}[name]
    first = reward.score([PROMPT] * len(OUTPUTS), OUTPUTS).scores
    second = reward.score([PROMPT] * len(OUTPUTS), OUTPUTS).scores
    assert first == second  # bit for bit
    assert first[0] == first[2]  # equal items, equal floats
    assert len(set(first)) == 4


def test_the_classifier_counts_truncation_and_a_mix_names_its_parts_counts(rewards):
    batch = rewards["both"].score([PROMPT] * 2, OUTPUTS[:2])
    assert batch.counts == {"rm-a/prompt_truncated": 0, "rm-a/answer_truncated": 0,
                            "rm-b/prompt_truncated": 0, "rm-b/answer_truncated": 0}
    assert rewards["rm-a"].score([PROMPT], ["x"]).counts == {"prompt_truncated": 0, "answer_truncated": 0}


def test_build_reward_builds_a_part_once_and_needs_its_files(tiny_zoo, specs):
    from rlmt.rewards import BuildContext

    assert reward_inputs("both", specs) == {"rm-a": "models/rm-a", "rm-b": "models/rm-b"}
    with pytest.raises(ValueError, match=r"reward 'both' needs input\(s\) \['rm-b'\]"):
        NamedReward("both", specs, {"rm-a": tiny_zoo["reward"]}).build(WARM_NOTHINK, device="cpu")
    with pytest.raises(ValueError, match="needs its model directory as input 'rm-a'"):
        build_reward("rm-a", specs, BuildContext(fmt=WARM_NOTHINK, device="cpu"))


# ----------------------------------------------------------------------------- reward-winrate with any reward


def _winrate(reward, policy: list[str], reference: list[str]):
    from rlmt.benchmarks import get_benchmark
    from rlmt.benchmarks.base import Item

    items = [Item(id=f"i{k}", messages=[{"role": "user", "content": f"Question {k}?"}], reference={})
             for k in range(len(policy))]
    gens = {i.id: {"id": i.id, "answer": a, "answer_found": True} for i, a in zip(items, policy)}
    refs = {i.id: {"id": i.id, "answer": a, "answer_found": True} for i, a in zip(items, reference)}
    return get_benchmark("reward-winrate", mixture_dir="unused").score(items, gens, reference_generations=refs,
                                                                       scorer=reward)


def test_reward_winrate_runs_with_a_rule_reward():
    # reward = answer length: 5 vs 2 (win), 1 vs 4 (loss), "same" vs "same" (identical: tie), 3 vs 3 (tie)
    result = _winrate(RuleReward(WARM_NOTHINK, lambda item: float(len(item.answer))),
                      ["aaaaa", "b", "same", "ccc"], ["dd", "eeee", "same", "fff"])
    assert [s.value for s in result.per_item] == [1.0, 0.0, 0.5, 0.5]
    assert result.metrics["win_rate"].value == pytest.approx(100 * 2 / 4)  # (1 + 0 + 0.5 + 0.5) / 4


def test_reward_winrate_with_a_mix_of_the_classifier_agrees_with_the_classifier(rewards):
    """One score call normalises both answers of every pair together: a mix of one model with itself
    (2 x the same z) orders each pair as the model does."""
    policy = ["A careful answer with detail.", "no", "I think so.", "Three points: one, two, three."]
    reference = ["ok", "A long and thoughtful reply with details.", "I think so.", "maybe"]
    alone, mixed = _winrate(rewards["rm-a"], policy, reference), _winrate(rewards["both"], policy, reference)
    for a, m in zip(alone.per_item, mixed.per_item):
        margin = a.details["policy_reward"] - a.details["reference_reward"]
        if abs(margin) > 1e-3:
            assert m.value == a.value, (a, m)
    assert mixed.per_item[2].details["identical_input"] and mixed.per_item[2].value == 0.5


def test_reward_winrate_refuses_what_is_not_an_answer_reward():
    from rlmt.benchmarks.base import BenchmarkError

    with pytest.raises(BenchmarkError, match="AnswerReward"):
        _winrate(object(), ["a"], ["b"])
    with pytest.raises(BenchmarkError, match="non-thinking format"):
        _winrate(RuleReward(WARM_THINK, lambda item: 0.0), ["a"], ["b"])


# ----------------------------------------------------------------------------- config, plan, trainers


def test_a_mix_entry_validates_and_bad_ones_say_what_is_wrong():
    from rlmt.config import ConfigError, RewardModelSpec, parse_config
    from rlmt.rewards.mix import MixSpec

    raw = _raw_config()
    cfg = parse_config(_with_rewards(raw, **{"tiny-rm-b": {"source": "tiny:reward"},
                                            "both": {"kind": "mix", "parts": {"tiny-rm": 1, "tiny-rm-b": 0.5}}}))
    assert isinstance(cfg.reward_models["both"], MixSpec) and cfg.reward_models["both"].normalise == "batch_z"
    assert isinstance(cfg.reward_models["tiny-rm"], RewardModelSpec)  # no kind: a classifier, as before
    bad = {
        "is not a reward_models entry": {"m": {"kind": "mix", "parts": {"nope": 1}}},
        r"refers back to itself \(m -> n -> m\)": {"m": {"kind": "mix", "parts": {"tiny-rm": 1, "n": 1}},
                                                  "n": {"kind": "mix", "parts": {"m": 1}}},
        r"refers back to itself \(m -> m\)": {"m": {"kind": "mix", "parts": {"m": 1}}},
        "finite": {"m": {"kind": "mix", "parts": {"tiny-rm": float("nan")}}},
        "unknown reward kind": {"m": {"kind": "blend", "parts": {"tiny-rm": 1}}},
        r"reward_models\.m\.mix\.parts": {"m": {"kind": "mix"}},
    }
    for message, entries in bad.items():
        with pytest.raises(ConfigError, match=message):
            parse_config(_with_rewards(raw, **entries))


def test_a_mix_cell_cannot_select_by_validation_reward():
    from rlmt.config import ConfigError, parse_config

    raw = _with_rewards(_raw_config(), both={"kind": "mix", "parts": {"tiny-rm": 1}})
    raw["grid"][0]["rm"] = ["both"]
    raw["grid"][0]["algo"] = ["ppo"]
    parse_config(raw)  # select_step: last
    raw["algorithms"].setdefault("ppo", {})["checkpoints"] = {"select_step": "best_val_reward"}
    with pytest.raises(ConfigError, match="batch-relative.*best_val_reward"):
        parse_config(raw)


def test_the_plan_gives_a_mix_cell_every_parts_files():
    from rlmt.config import parse_config
    from rlmt.workflow import Plan

    raw = _with_rewards(_raw_config(), **{"tiny-rm-b": {"source": "tiny:reward"},
                                         "both": {"kind": "mix", "parts": {"tiny-rm": 1, "tiny-rm-b": 2}}})
    raw["grid"][0]["rm"] = ["both"]
    plan = Plan(parse_config(raw))
    cell = next(c for c in plan.cell_names if "__both__" in c)
    assert plan.train_inputs(cell)["reward"] == ["results/models/tiny-rm", "results/models/tiny-rm-b"]
    assert plan.reward_args("both") == ("--reward-input tiny-rm=results/models/tiny-rm "
                                        "--reward-input tiny-rm-b=results/models/tiny-rm-b")
    assert "both" not in plan.prepared_models() and "tiny-rm-b" in plan.prepared_models()


def test_the_cli_refuses_a_reward_model_dir_for_a_mix_and_names_missing_inputs(tmp_path, tiny_zoo):
    from typer.testing import CliRunner

    from rlmt.cli import app

    raw = _with_rewards(_raw_config(), both={"kind": "mix", "parts": {"tiny-rm": 1}})
    raw["grid"][0]["rm"] = ["both"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    cell = "grpo__llama-base__warm-start__nothink__both__demo"
    common = ["train", "grpo", "--config", str(tmp_path / "config.yaml"), "--cell", cell, "--policy",
              str(tiny_zoo["llama-instruct"]), "--train", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o")]
    done = CliRunner().invoke(app, [*common, "--reward-model", str(tiny_zoo["reward"])])
    assert done.exit_code == 2 and "kind 'mix'" in done.output and "--reward-input" in done.output
    done = CliRunner().invoke(app, common)
    assert done.exit_code == 2 and "tiny-rm=results/models/tiny-rm" in done.output
    done = CliRunner().invoke(app, [*common, "--reward-input", f"tiny-rm={tmp_path / 'absent'}"])
    assert done.exit_code == 2 and "not found" in done.output


@pytest.mark.slow
def test_eval_score_judges_the_win_rate_with_a_named_mix(tmp_path, tiny_zoo, mlflow_uri):
    """`rlmt eval score --bench reward-winrate --reward both --reward-input ...`: the config supplies the mix, the
    command its parts' model dirs; the identical pair ties, the others are decided."""
    import json

    from typer.testing import CliRunner

    from rlmt.benchmarks.base import Item
    from rlmt.benchmarks.item_files import write_items
    from rlmt.cli import app

    raw = _with_rewards(_raw_config(), **{"tiny-rm-b": {"source": "tiny:reward"},
                                         "both": {"kind": "mix", "parts": {"tiny-rm": 1, "tiny-rm-b": 1}}})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    items = [Item(id=f"i{k}", messages=[{"role": "user", "content": f"Question {k}?"}], reference={}) for k in range(3)]
    write_items(items, tmp_path / "items.jsonl")
    for name, answers in (("gens", ["A careful answer.", "same", "no"]), ("ref", ["ok", "same", "A long reply."])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": i.id, "answer": a, "answer_found": True}) + "\n"
                                                        for i, a in zip(items, answers)))
    done = CliRunner().invoke(app, [
        "eval", "score", "--config", str(tmp_path / "config.yaml"), "--bench", "reward-winrate",
        "--items", str(tmp_path / "items.jsonl"), "--generations", str(tmp_path / "gens.jsonl"),
        "--reference", str(tmp_path / "ref.jsonl"), "--reward", "both",
        "--reward-input", f"tiny-rm={tiny_zoo['reward']}", "--reward-input", f"tiny-rm-b={tiny_zoo['reward']}",
        "--out", str(tmp_path / "scores.json")])
    assert done.exit_code == 0, done.output
    per_item = [json.loads(line) for line in (tmp_path / "per_item.jsonl").read_text().splitlines()]
    assert [row["details"]["identical_input"] for row in per_item] == [False, True, False]
    assert per_item[1]["value"] == 0.5 and {per_item[0]["value"], per_item[2]["value"]} <= {0.0, 1.0}


def test_a_ready_built_reward_must_extract_as_the_policy_does(tiny_zoo):
    from rlmt.train.job import cell_reward
    from rlmt.train.runtime import TrainingSetupError

    reward = RuleReward(WARM_NOTHINK, lambda item: 0.0)
    assert cell_reward(reward, WARM_NOTHINK, strict=False) is reward
    with pytest.raises(TrainingSetupError, match="warm-think"):
        cell_reward(reward, WARM_THINK, strict=False)
    with pytest.raises(TrainingSetupError, match="strict"):
        cell_reward(reward, WARM_NOTHINK, strict=True)


@pytest.mark.slow
def test_the_workflow_plans_a_mix_cell_with_every_parts_model(tmp_path):
    """`snakemake -n` on the default config plus a mix cell: its training job waits for both parts' model dirs and
    passes them as --reward-input; the classifier cells keep theirs; the win rate, judged by the mix, gets its
    name and both files."""
    import re
    import subprocess
    import sys

    raw = _with_rewards(_raw_config(), **{"tiny-rm-b": {"source": "tiny:reward"},
                                         "both": {"kind": "mix", "parts": {"tiny-rm": 1, "tiny-rm-b": 2}}})
    raw["grid"][0]["rm"] = ["tiny-rm", "both"]
    raw["evaluation"]["benchmarks"]["reward-winrate"]["options"] = {"reward_model": "both"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(ROOT / "Snakefile"),
                           "-d", str(tmp_path / "work"), f"--configfile={tmp_path / 'config.yaml'}", "all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    train = [line for line in proc.stdout.splitlines() if "rlmt.cli train grpo" in line]
    mix = [line for line in train if "__both__" in line]
    assert mix and all("--reward-input tiny-rm=results/models/tiny-rm --reward-input "
                       "tiny-rm-b=results/models/tiny-rm-b" in line for line in mix)
    odin = [line for line in train if "__tiny-rm-odin__" in line]  # the default's length-debiased cell: tiny-rm, its fit
    assert len(odin) == 1 and "--reward-input tiny-rm=results/models/tiny-rm --reward-input tiny-rm-odin:tokenizer=" \
        "results/models/llama-base --reward-input tiny-rm-odin:calibration=results/rewards/tiny-rm-odin/" \
        "calibration.json --train" in odin[0]
    assert all("--reward-input tiny-rm=results/models/tiny-rm --train" in line for line in train
               if line not in mix and line not in odin)
    winrate = [line for line in proc.stdout.splitlines() if "--bench reward-winrate" in line and "eval score" in line]
    assert winrate and all(re.search(r"--reward both --reward-input tiny-rm=results/models/tiny-rm --reward-input "
                                     r"tiny-rm-b=results/models/tiny-rm-b --out", line) for line in winrate)


def test_the_readmes_example_reward_kind_registers_builds_and_scores_answers_only(monkeypatch):
    """The README's "A reward kind" example, as printed, is a working kind: registered, it builds from a config
    entry through build_reward (no trainer involved) and scores the extracted answer, never the thought."""
    import re
    from typing import Literal  # noqa: F401  (the example's names)

    from rlmt.algorithms.settings import Strict  # noqa: F401
    from rlmt.rewards import registry
    from rlmt.rewards.registry import RewardKind  # noqa: F401

    readme = (ROOT / "README.md").read_text()
    example = next(b for b in re.findall(r"```text\n(.*?)```", readme, re.S) if "rlmt/rewards/keyword.py" in b)
    namespace = dict(globals(), **locals())
    exec(compile(example, "README.md:keyword", "exec"), namespace)
    monkeypatch.setitem(registry._KINDS._items, "keyword", namespace["KIND"])  # removed again after the test
    specs = {"polite": namespace["KeywordSpec"](kind="keyword", word="please")}
    reward = NamedReward("polite", specs).build(WARM_THINK)
    batch = reward.score([[{"role": "user", "content": "hi"}]] * 2,
                         ["<think>please</think>no", "<think>hm</think>Yes, please."])
    # by hand: the first output's word is in its thought only, the second's in its answer
    assert batch.scores == [0.0, 1.0]


def test_the_report_builds_unchanged_for_cells_rewarded_by_a_rubric_judge_and_a_mix(tmp_path):
    """The report reads score files, whatever scored the rollouts: a grid whose cells are rewarded by a rubric
    judge and by a mix (and whose reward win rate is judged by the mix) gets its main table, think deltas and
    head-to-head rows, one per cell, as a classifier grid does."""
    import csv
    import random

    from test_report_numbers import LABELS, N_ITEMS, _write_bench_scores

    from rlmt.config import parse_config
    from rlmt.report.build import ReportConfig, build_report
    from rlmt.report.collect import CollectConfig, collect_model_scores
    from rlmt.workflow import Plan

    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["reward_models"]["judged"] = {
        "kind": "rubric", "judge": {"base_url": "http://127.0.0.1:9/v1", "model": "j", "api_key_env": None},
        "rubrics": {"column": "rubric", "path": str(tmp_path / "rubrics.jsonl")}}
    raw["reward_models"]["mixed"] = {"kind": "mix", "parts": {"tiny-rm": 1.0, "judged": 1.0}}
    raw["grid"] = [{"algo": ["grpo"], "base": ["llama-base"], "start": ["warm-start"], "think": [True, False],
                    "rm": ["judged", "mixed"], "mixture": ["demo"]}]
    raw["evaluation"]["benchmarks"] = {b: {"limit": N_ITEMS} for b in LABELS}
    raw["evaluation"]["benchmarks"]["reward-winrate"]["options"] = {"reward_model": "mixed"}
    plan = Plan(parse_config(raw), root=str(tmp_path / "results"))
    assert len(plan.cell_names) == 4
    rng = random.Random(5)
    for model in plan.eval_models:
        if not plan.benchmarks_for(model):
            continue
        files = [Path(plan.scores_file(model, b)) for b in LABELS]
        for b, path in zip(LABELS, files):
            _write_bench_scores(path, b, rng, drop_item=False)
        collect_model_scores(CollectConfig(model=model, cell=model if model in plan.cell_by_name else None), files,
                             plan.scores_file(model))
    out = tmp_path / "report"
    build_report(plan, ReportConfig(out_dir=str(out), eval_root=str(tmp_path / "results/eval"),
                                    tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}"))
    with (out / "main_table.csv").open() as f:
        table = list(csv.DictReader(f))
    text = (out / "main_table.csv").read_text()
    assert all(cell in text for cell in plan.cell_names), text[:500]
    assert len(table) >= 4
    with (out / "head_to_head.csv").open() as f:
        pairs = list(csv.DictReader(f))
    assert len(pairs) == 2  # judged and mixed: each think cell against its no-think twin
    assert (out / "report.md").read_text().count("grpo__llama-base__warm-start__think__") >= 2
