"""The shipped warm-start SFT demo set (the embedded default's stand-in for the teacher's output)."""

from __future__ import annotations

import json
import re
from importlib import resources


def _rows(name: str) -> list[dict]:
    with resources.files("rlmt.resources").joinpath(name).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_demo_sft_rows_are_complete_and_sized_like_the_spec():
    rows = _rows("demo_sft.jsonl")
    assert len(rows) == 40
    assert [r["id"] for r in rows] == [f"sft-{i:03d}" for i in range(40)]
    for r in rows:
        assert set(r) == {"id", "messages", "thought", "response"}, r["id"]
        [turn] = r["messages"]
        assert turn["role"] == "user" and turn["content"].strip(), r["id"]
        assert 40 <= len(r["thought"].split()) <= 80, r["id"]
        assert 40 <= len(r["response"].split()) <= 120, r["id"]
        # The thought is a plan about the prompt, never about tags or the planning instruction.
        for tag in ("<think>", "</think>", "<response>", "</response>"):
            assert tag not in r["thought"] and tag not in r["response"], r["id"]
    assert len({r["messages"][0]["content"] for r in rows}) == 40


def test_demo_sft_prompts_are_disjoint_from_the_rl_prompts():
    rl = [row["messages"][-1]["content"] for row in _rows("demo_prompts.jsonl")]
    rl_words = [_words(p) for p in rl]
    for r in _rows("demo_sft.jsonl"):
        prompt = r["messages"][0]["content"]
        assert prompt not in rl, r["id"]
        words = _words(prompt)
        closest = max(len(words & w) / len(words | w) for w in rl_words)
        assert closest < 0.4, (r["id"], prompt)
