"""Checks rlmt/resources/demo_if.jsonl: IFEval-format prompts that lm-eval's IFEval checkers can score.

Every instruction id must be registered in lm-eval's ``INSTRUCTION_DICT``, every kwargs dict must be
accepted by that checker's ``build_description`` (and taken as given, not replaced by a random default),
and for a few rows a hand-written compliant response passes while a violating one fails.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

# Importing the registry tries to fetch nltk's punkt_tab; offline that prints an error and carries on.
# It needs lm-eval's "ifeval" extra (langdetect, immutabledict, nltk): a missing one should fail, not skip.
from lm_eval.tasks.ifeval import utils as ifeval_utils
from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

# These two checkers tokenize with nltk's punkt_tab, which is not available offline.
NLTK_IDS = {"length_constraints:number_sentences", "change_case:capital_word_frequency"}


def _load_rows() -> list[dict]:
    text = resources.files("rlmt").joinpath("resources/demo_if.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


ROWS = _load_rows()
BY_KEY = {row["key"]: row for row in ROWS}


def _build(instruction_id: str, kwargs: dict):
    checker = INSTRUCTION_DICT[instruction_id](instruction_id)
    checker.build_description(**kwargs)
    return checker


def _follows(row: dict, response: str) -> list[bool]:
    """Strict IFEval scoring of one response, one bool per instruction."""
    return [
        bool(response.strip()) and bool(_build(iid, kw).check_following(response))
        for iid, kw in zip(row["instruction_id_list"], row["kwargs"], strict=True)
    ]


def test_row_shape_and_uniqueness():
    assert 45 <= len(ROWS) <= 60
    keys = [row["key"] for row in ROWS]
    prompts = [row["prompt"] for row in ROWS]
    assert len(set(keys)) == len(keys), "keys must be unique"
    assert len(set(prompts)) == len(prompts), "prompts must be unique"
    for row in ROWS:
        assert set(row) == {"key", "prompt", "instruction_id_list", "kwargs"}, row
        assert isinstance(row["key"], int) and not isinstance(row["key"], bool)
        assert isinstance(row["prompt"], str) and row["prompt"].strip()
        ids = row["instruction_id_list"]
        assert 1 <= len(ids) <= 3, row["key"]
        assert len(set(ids)) == len(ids), row["key"]
        assert isinstance(row["kwargs"], list) and len(row["kwargs"]) == len(ids), row["key"]
        assert all(isinstance(kw, dict) for kw in row["kwargs"]), row["key"]


def test_ids_registered_and_kwargs_build():
    for row in ROWS:
        for iid, kw in zip(row["instruction_id_list"], row["kwargs"], strict=True):
            assert iid in INSTRUCTION_DICT, (row["key"], iid)
            # lm-eval drops falsy kwargs before building; a falsy value would silently become random.
            assert all(v for v in kw.values()), (row["key"], iid, kw)
            checker = _build(iid, kw)
            assert isinstance(checker.build_description(**kw), str)
            assert set(kw) <= set(checker.get_instruction_args_keys()), (row["key"], iid, kw)
            if not checker.get_instruction_args_keys():
                assert kw == {}, (row["key"], iid)
            args = checker.get_instruction_args() or {}
            for name, value in kw.items():
                got = args[name]
                if name in ("forbidden_words", "keywords"):
                    got, value = sorted(got), sorted(set(value))
                elif name in ("first_word", "letter"):
                    value = value.lower()
                assert got == value, (row["key"], iid, name, got, value)


def test_coverage_and_offline_friendliness():
    used = [iid for row in ROWS for iid in row["instruction_id_list"]]
    assert len(set(used)) >= 20
    nltk_rows = [row["key"] for row in ROWS if NLTK_IDS & set(row["instruction_id_list"])]
    assert len(nltk_rows) <= 2, nltk_rows


CASES = {
    1: (
        "* Pick a calm moment during the day rather than knocking at midnight.\n"
        "* Start friendly and mention that you have to get up early for work.\n"
        "* Describe the specific noise and the hours when it happens.\n"
        "* Suggest an easy fix such as a rug or soft slippers after eleven.",
        "* Talk to them during the day.\n"
        "* Be friendly, specific and calm.\n"
        "* Suggest a rug.",
        [False, False],
    ),
    4: (
        "Day 1\nTake the train up to keep the budget low and check into a shared cabin.\n\n"
        "Day 2\nHike the free trails and pack a picnic lunch instead of eating out.\n\n"
        "Day 3\nBrowse the farmers market before heading home; set aside a small budget for souvenirs.",
        "Day 1\nTake the train up to keep the budget low.\n\nDay 2\nHike the trails and head home.",
        [False, False],
    ),
    11: (
        "Elias had kept the light on the northern cliff for thirty years.\n\n"
        "Suddenly, a green bottle rolled onto the rocks below the tower.\n\n"
        "Inside was a note from a girl asking whether anyone still watched the sea.\n\n"
        "He wrote back that night, and the light burned a little brighter.",
        "Elias had kept the light on the northern cliff for thirty years.\n\n"
        "Then a green bottle rolled onto the rocks below the tower.\n\n"
        "Inside was a note from a girl asking whether anyone still watched the sea.\n\n"
        "He wrote back that night, and the light burned a little brighter.",
        [False],
    ),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_hand_written_responses(key):
    row = BY_KEY[key]
    compliant, violating, expected_violating = CASES[key]
    assert _follows(row, compliant) == [True] * len(row["instruction_id_list"])
    assert _follows(row, violating) == expected_violating


def test_lm_eval_strict_scoring_agrees():
    """lm-eval's own strict scorer, fed the same rows, gives the same verdicts."""
    for key, (compliant, violating, expected_violating) in CASES.items():
        row = BY_KEY[key]
        inp = ifeval_utils.InputExample(**row)
        assert ifeval_utils.test_instruction_following_strict(inp, compliant).follow_all_instructions
        out = ifeval_utils.test_instruction_following_strict(inp, violating)
        assert out.follow_instruction_list == expected_violating
