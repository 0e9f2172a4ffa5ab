"""Our benchmark scorers against verdicts and scores computed once with the official code.

The fixtures under ``tests/fixtures/official/<bench>/`` were built by the script beside them, run
in the official repository's own environment at the commit recorded in its ``meta.json``; the
official code is not part of this project. Each test recomputes the same numbers with our scorer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "official"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------- IFBench


@pytest.fixture(scope="module")
def ifbench_cases(data_dir):
    from rlmt.benchmarks.ifeval import read_instruction_rows

    meta = json.loads((FIXTURES / "ifbench" / "meta.json").read_text())
    rows = {str(r["key"]): r for r in read_instruction_rows(data_dir / "benchmarks" / "ifbench" / "data.json")}
    cases = []
    for fx in _jsonl(FIXTURES / "ifbench" / "verdicts.jsonl"):
        response = fx["response"] if fx["generic"] is None else meta["generic_responses"][fx["generic"]]
        row = rows[fx["key"]]
        for index, verdict in enumerate(fx["verdicts"]):
            assert row["instruction_id_list"][index] == verdict["id"], fx["key"]
            cases.append((row, index, response, verdict))
    return meta, cases


def _ours(bench, row, index, response):
    from rlmt.benchmarks.ifeval import Unscorable, loose_variants

    check = bench.checker(row["instruction_id_list"][index], row["kwargs"][index], row["prompt"])
    out = {}
    for level, variants in (("strict", [response]), ("loose", loose_variants(response))):
        try:
            out[level] = bench._check_variants(check, variants)
        except Unscorable as err:
            out[level] = f"unscorable:{err}"
    return out


def test_ifbench_fixture_is_from_the_version_our_data_comes_from(ifbench_cases):
    from rlmt.benchmarks.ifbench import OFFICIAL_VERSION

    meta, cases = ifbench_cases
    assert meta["commit"].startswith(OFFICIAL_VERSION.split("@")[1])
    ids = {verdict["id"] for _, _, _, verdict in cases}
    assert len(ids) == 57 and len(cases) > 5000
    comparable = [v for _, _, _, v in cases if isinstance(v["strict"], bool)]
    # both outcomes are exercised for most ids (a fixture of only failures would prove little)
    both = {i for i in ids if {v["strict"] for v in comparable if v["id"] == i} == {True, False}}
    assert len(both) >= 50, sorted(ids - both)


def test_ifbench_checkers_give_the_official_verdicts(ifbench_cases):
    from rlmt.benchmarks import get_benchmark

    _, cases = ifbench_cases
    bench = get_benchmark("ifbench")
    disagreements: Counter = Counter()
    examples: dict[str, tuple] = {}
    n_compared = 0
    for row, index, response, verdict in cases:
        if verdict.get("official_random"):
            continue
        ours = _ours(bench, row, index, response)
        for level in ("strict", "loose"):
            official = verdict[level]
            if official == "unavailable":  # official needs nltk data the build machine lacks
                assert isinstance(ours[level], bool) or ours[level].startswith("unscorable:nltk-data-missing")
                continue
            expected = official if isinstance(official, bool) else False  # an official crash: not followed
            n_compared += 1
            if ours[level] != expected:
                disagreements[(verdict["id"], level)] += 1
                examples.setdefault(verdict["id"], (level, response[:120], official, ours[level]))
    assert n_compared > 10000
    assert not disagreements, (dict(disagreements), examples)


def test_ifbench_corrected_reading_is_an_option_that_changes_only_its_ids(ifbench_cases):
    from rlmt.benchmarks import get_benchmark
    from rlmt.benchmarks.ifbench_corrected import CORRECTED

    _, cases = ifbench_cases
    official, corrected = get_benchmark("ifbench"), get_benchmark("ifbench", reading="corrected")
    changed: Counter = Counter()
    for row, index, response, verdict in cases:
        if verdict.get("official_random") or verdict["strict"] == "unavailable":
            continue
        a, b = _ours(official, row, index, response), _ours(corrected, row, index, response)
        if a != b:
            changed[verdict["id"]] += 1
    assert set(changed) <= set(CORRECTED)
    assert len(changed) >= 6, changed  # the corrected readings do differ on the fixture
