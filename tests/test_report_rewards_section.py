"""The report's Rewards section: each reward a cell trains on, its kind and its own one-line description.

Expected lines are written out here by hand from the config entries and a calibration file this test
writes; nothing is computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _plan(tmp_path: Path, raw: dict | None = None):
    from rlmt.config import parse_config
    from rlmt.workflow import Plan

    raw = raw or yaml.safe_load((ROOT / "config/config.yaml").read_text())
    return Plan(parse_config(raw), root=str(tmp_path / "results"))


def _row(lines: list[str], name: str) -> list[str]:
    hits = [line for line in lines if line.startswith(f"| {name} |")]
    assert len(hits) == 1, lines
    return [c.strip() for c in hits[0].strip("|").split("|")]


def test_the_default_report_names_the_debiased_reward_with_its_fit(tmp_path):
    from rlmt.report import rewards_section

    plan = _plan(tmp_path)
    fit = tmp_path / "results/rewards/tiny-rm-odin/calibration.json"
    fit.parent.mkdir(parents=True)
    fit.write_text(json.dumps({"reward": "tiny-rm-odin", "base": "tiny-rm", "tokenizer_model": "llama-base",
                               "slope": -0.01234, "intercept": 0.5, "mean_length": 37.25, "n": 15,
                               "pearson_before": 0.4149, "pearson_after": 1e-17,
                               "n_malformed_excluded": 33}))
    lines = rewards_section.markdown(plan)
    assert lines[0] == "## Rewards"
    name, kind, what, used = _row(lines, "tiny-rm-odin")
    assert kind == "length_debiased"
    assert what == ("tiny-rm - slope x (answer tokens - mean), ODIN-style; fitted on llama-base__sft__think__demo-sft's "
                    "answers to 48 demo/train prompts: slope -0.01234 per token, mean 37.2 tokens, reward-length "
                    "Pearson r +0.41 -> +0.00 on 15 answers (33 malformed left out)")
    assert used == "grpo llama-base think tiny-rm-odin demo"
    name, kind, what, used = _row(lines, "tiny-rm")
    assert (kind, what) == ("classifier", "Bradley-Terry classifier `tiny:reward`")
    cells = used.split("; ")
    assert len(cells) == 13 and cells[-1] == "the reward win rate (judge)"  # 12 cells train on it, and it judges
    assert "grpo llama-base think tiny-rm demo" in cells and "dpo qwen-base nothink tiny-rm demo" in cells


def test_an_unfitted_debiased_reward_says_so_and_the_html_has_the_table(tmp_path):
    from rlmt.report import rewards_section

    plan = _plan(tmp_path)
    assert _row(rewards_section.markdown(plan), "tiny-rm-odin")[2].endswith("48 demo/train prompts (not fitted yet)")
    fit = tmp_path / "results/rewards/tiny-rm-odin/calibration.json"  # a fit for another tokenizer is not this one's
    fit.parent.mkdir(parents=True)
    fit.write_text(json.dumps({"reward": "tiny-rm-odin", "base": "tiny-rm", "tokenizer_model": "qwen-base",
                               "slope": 0.1, "mean_length": 3.0, "n": 4}))
    assert _row(rewards_section.markdown(plan), "tiny-rm-odin")[2].endswith(
        f"(its calibration file is not usable: {fit} was fitted for tokenizer_model 'qwen-base', not 'llama-base': "
        "rerun the calibration)")
    page = rewards_section.html_section(plan)
    assert page.startswith("<h2>Rewards</h2>") and page.count("<tr>") == 3  # the header and two rewards


def test_each_kind_describes_itself():
    from rlmt.rewards.length import LengthPenaltySpec
    from rlmt.rewards.mix import MixSpec
    from rlmt.rewards.classifier import RewardModelSpec

    penalty = LengthPenaltySpec(kind="length_penalty", base="rm", tokenizer_model="llama-base",
                                max_answer_tokens=512, soft_punish_cache=128, coefficient=0.5)
    assert penalty.describe("rm-lp") == ("rm + 0.5 x DAPO soft overlong punishment on answer tokens (0 up to 384, -1 "
                                         "from 512; llama-base's tokenizer)")
    mix = MixSpec(kind="mix", parts={"a": 0.7, "b": 0.3})
    assert mix.describe("m") == "mix: 0.7·z(a) + 0.3·z(b), each part z-normalised over the scored batch"
    trained = RewardModelSpec(train={"backbone": "smol", "reference": "ref.json", "keep_layers": 8,
                                     "max_length_ratio": 1.5, "min_shorter_chosen_share": 0.5})
    assert trained.describe("rm") == ("Bradley-Terry classifier trained here on smol (first 8 layers); length-balanced "
                                      "pairs: length ratio <= 1.5, >= 50% of pairs with the shorter answer chosen")


def test_a_kind_without_describe_is_still_listed(tmp_path, monkeypatch):
    """describe is optional for a kind: the row then names the kind alone."""
    from rlmt.report import rewards_section
    from rlmt.rewards.length import LengthPenaltySpec

    raw = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    raw["reward_models"]["tiny-rm-lp"] = {"kind": "length_penalty", "base": "tiny-rm", "tokenizer_model": "llama-base",
                                          "max_answer_tokens": 64, "soft_punish_cache": 16}
    raw["grid"].append({"algo": ["ppo"], "base": ["qwen-base"], "start": ["warm-start"], "think": [False],
                        "rm": ["tiny-rm-lp"], "mixture": ["demo"]})
    monkeypatch.delattr(LengthPenaltySpec, "describe")
    name, kind, what, used = _row(rewards_section.markdown(_plan(tmp_path, raw)), "tiny-rm-lp")
    assert (kind, what, used) == ("length_penalty", "a `length_penalty` reward (its kind describes nothing more)",
                                  "ppo qwen-base nothink tiny-rm-lp demo")
