"""WildBench against verdicts and tables computed once with the official code (allenai/WildBench,
commit in ``tests/fixtures/official/wildbench/meta.json``; rebuilt by ``build_wildbench.py`` beside
it, which ran the official ``eval.py`` prompt builder, ``batch_results_format.py`` and
``leaderboard/data_dir/_create_tables.py`` unchanged on synthetic replies). Every fixture reply is
parsed by our default (official) parser, and every official table row -- WB-Reward at K = -1, 0,
100, 500 with its task categories and task macro, WB-Score with its categories and macro -- is
recomputed by our scorer from the same items, answers and replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlmt.benchmarks import get_benchmark
from rlmt.judges.parsing import (parse_wildbench_choice, parse_wildbench_choice_official, parse_wildbench_score,
                                 parse_wildbench_score_official)

FIX = Path(__file__).resolve().parent / "fixtures" / "official" / "wildbench"
TOL = 1e-9  # the official tables are plain float sums; ours the same sums in another order


def _load(name: str):
    return json.loads((FIX / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pairwise():
    return _load("pairwise.json")


@pytest.fixture(scope="module")
def score():
    return _load("score.json")


def _bench(**options):
    return get_benchmark("wildbench", path=str(FIX / "items.jsonl"), **options)


def _generations(answers: dict[str, str]) -> dict[str, dict]:
    return {sid: {"id": sid, "answer": a, "answer_found": True} for sid, a in answers.items()}


def _judgments(rows: list[dict], parser, reward: bool) -> dict[str, list[dict]]:
    out = {}
    for row in rows:
        parsed = parser(row["reply"])
        j = {"raw": row["reply"], "parsed": parsed, "ok": parsed is not None}
        if reward:
            j["candidate"] = row["candidate"]
        out[row["session_id"]] = [j]
    return out


def test_meta_names_the_official_commit():
    meta = _load("meta.json")
    assert meta["official"] == "allenai/WildBench" and len(meta["commit"]) == 40
    assert meta["n_replies"] >= 300


def test_pairwise_replies_parse_as_official(pairwise):
    n_kept = n_dropped = 0
    for model, data in pairwise["models"].items():
        for row in data["replies"]:
            ours = parse_wildbench_choice_official(row["reply"])
            official = row["official"]
            if official is None:
                n_dropped += 1
                assert ours is None, (model, row["style"], row["reply"][:80])
            else:
                n_kept += 1
                assert ours == official["choice"], (model, row["reply"][:80])
                extent = {"A++": 2, "A+": 1, "A=B": 0, "B+": 1, "B++": 2}[ours]
                assert extent == official["extent"]
                winner = "tie" if ours == "A=B" else ("model" if ours[0] == row["candidate"] else "ref")
                assert winner == official["winner"]
    assert n_kept >= 120 and n_dropped >= 30


def test_score_replies_parse_as_official(score):
    n_kept = n_dropped = 0
    for model, data in score["models"].items():
        for row in data["replies"]:
            ours = parse_wildbench_score_official(row["reply"])
            if row["official"] is None:
                n_dropped += 1
                assert ours is None, row["reply"][:80]
            else:
                n_kept += 1
                assert ours == float(row["official"]["score"]), row["reply"][:80]
    assert n_kept >= 60 and n_dropped >= 10


def test_odd_replies_parse_as_official_or_are_quarantined():
    """Replies the official scripts keep parse to the same value; dropped ones are None; the ones
    that stop the official scripts (TypeError/ValueError) are None here (quarantined, counted)."""
    rows = _load("parse_only.json")
    outcomes = {r["official"]["outcome"] for r in rows}
    assert outcomes == {"kept", "dropped", "error"}
    for row in rows:
        parser = parse_wildbench_choice_official if row["mode"] == "pairwise" else parse_wildbench_score_official
        ours = parser(row["reply"])
        official = row["official"]
        if official["outcome"] == "kept":
            assert ours == (official["choice"] if row["mode"] == "pairwise" else official["score"]), row["reply"]
        else:
            assert ours is None, row["reply"]
    # official keeps a score of "0" and out-of-range scores
    kept = {r["reply"]: r["official"].get("score") for r in rows if r["mode"] == "score" and r["official"]["outcome"] == "kept"}
    assert kept['{"score": "0"}'] == 0.0 and kept['{"score": 11}'] == 11.0


def test_official_prompt_cut_and_empty_marker(pairwise, score):
    """Our official-protocol shown answers equal the official prompt's (1,000 space-separated
    words + '... (truncated)', empty -> marker; score mode cuts nothing)."""
    from rlmt.benchmarks.wildbench import shown_official

    items = {json.loads(line)["session_id"]: json.loads(line) for line in (FIX / "items.jsonl").read_text().splitlines()}
    n_cut = 0
    for data in pairwise["models"].values():
        for row in data["replies"]:
            if row["official"] is None:
                continue
            sid = row["session_id"]
            assert shown_official(data["answers"][sid], 1000).strip() == row["official"]["shown_model"]
            assert shown_official(items[sid]["references"]["gpt-4"], 1000).strip() == row["official"]["shown_ref"]
            n_cut += any(row["official"][f"shown_{w}"].endswith("... (truncated)") for w in ("model", "ref"))
    assert n_cut >= 5
    for data in score["models"].values():
        for row in data["replies"]:
            if row["official"] is not None:
                assert shown_official(data["answers"][row["session_id"]], None, empty_marker=False).strip() \
                    == row["official"]["shown"]


@pytest.mark.parametrize("k", [-1, 0, 100, 500])
def test_wb_reward_equals_official_table(pairwise, k):
    rows = pairwise["official_rows"][str(k)]
    assert set(rows) == set(pairwise["models"])
    for model, data in pairwise["models"].items():
        bench = _bench(mode="reward", length_penalty_k=k)
        items = bench.load_items(None)
        res = bench.aggregate(items, _generations(data["answers"]), _judgments(data["replies"], parse_wildbench_choice_official, True),
                              "official")
        official = rows[model]
        assert res.metrics["reward"].value == pytest.approx(100 * official["reward"], abs=TOL), (model, k)
        assert res.metrics["reward"].n == official["total"]
        assert res.metrics["task_macro_reward"].value == pytest.approx(100 * official["task_macro_reward"], abs=TOL)
        assert res.extra["task_categories"] == pytest.approx(
            {g: 100 * v for g, v in official["task_categorized_rewards"].items()}, abs=TOL)
        counted = {100: "win_much", 50: "win", 0: "tie", -50: "lose", -100: "lose_much"}
        assert {counted[int(v)]: n for v, n in res.extra["reward_distribution"].items()} == \
            {c: official[c] for c in counted.values() if official[c]}
        assert res.extra["length_penalty_k"] == (None if k < 0 else k)


def test_wb_reward_truncated_and_empty_items_count_zero_in_the_total(pairwise):
    """The official >1,000-word rule in reward mode: an item whose shown answer or reference was cut
    (or is empty) is no win/tie/loss, yet stays in ``total``; task categories leave it out."""
    data, official = pairwise["models"]["model-alpha"], pairwise["official_rows"]["-1"]["model-alpha"]
    bench = _bench(mode="reward")
    res = bench.aggregate(bench.load_items(None), _generations(data["answers"]),
                          _judgments(data["replies"], parse_wildbench_choice_official, True), "official")
    n_excluded = sum(res.extra["official_excluded"].values())
    assert n_excluded >= 3
    assert official["total"] - sum(official[c] for c in ("win_much", "win", "tie", "lose", "lose_much")) == n_excluded
    assert all(s.value == 0.0 for s in res.per_item if s.details.get("official_excluded"))


def test_wb_score_equals_official_table(score):
    n_excluded = 0
    for model, data in score["models"].items():
        bench = _bench(mode="score")
        res = bench.aggregate(bench.load_items(None), _generations(data["answers"]),
                              _judgments(data["replies"], parse_wildbench_score_official, False), "official")
        official = score["official_rows"][model]
        assert res.metrics["score"].value == pytest.approx(10 * official["adjusted_score"], abs=TOL), model
        assert res.metrics["score"].n == official["total"]
        assert res.metrics["task_macro_score"].value == pytest.approx(10 * official["adjusted_task_macro_score"], abs=TOL)
        assert res.extra["task_categories"] == pytest.approx(
            {g: 10 * v for g, v in official["task_categorized_scores"].items()}, abs=TOL)
        n_excluded += sum(res.extra["official_excluded"].values())
    assert n_excluded >= 3  # empty, blank and '... (truncated)'-ending answers: in the mean, not in the categories
    # a group with no parsed reply is absent, and still weighs in the official 4.75 denominator
    assert "Coding & Debugging" not in score["official_rows"]["model-sparse"]["task_categorized_scores"]


def test_default_is_the_official_rule_and_leniency_is_counted(pairwise, score):
    bench = _bench()
    assert bench.parsing == "official" and bench.length_penalty_k is None and bench.official_max_words == 1000
    assert _bench(mode="score").official_max_words is None
    for mode, data, reward in (("reward", pairwise, True), ("score", score, False)):
        official_parser = parse_wildbench_choice_official if reward else parse_wildbench_score_official
        lenient_parser = parse_wildbench_choice if reward else parse_wildbench_score
        for model, d in data["models"].items():
            b = _bench(mode=mode)
            res = b.aggregate(b.load_items(None), _generations(d["answers"]), _judgments(d["replies"], official_parser, reward),
                              "official")
            rescued = sum(1 for r in d["replies"] if official_parser(r["reply"]) is None
                          and lenient_parser(r["reply"]) is not None)
            assert res.extra["lenient_rescued_replies"] == rescued and res.extra["reply_parsing"] == "official"
    # the lenient reading is an option; it parses fenced / prose replies the official one drops
    fenced = [r for d in pairwise["models"].values() for r in d["replies"] if r["style"] == "fenced"]
    assert fenced and all(parse_wildbench_choice(r["reply"]) is not None for r in fenced)
    assert _bench(reply_parsing="lenient").parsing == "lenient"
