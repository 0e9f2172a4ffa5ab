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


# ---------------------------------------------------------------------- Arena-Hard v2

AH = FIXTURES / "arenahard"


@pytest.fixture(scope="module")
def arena():
    meta = json.loads((AH / "meta.json").read_text())
    official = json.loads((AH / "official_scores.json").read_text())
    answers = {}
    for path in sorted((AH / "model_answer").glob("*.jsonl")):
        rows = _jsonl(path)
        answers[rows[0]["model"]] = {r["uid"]: r for r in rows}
    judgments = {}
    for path in sorted((AH / "model_judgment" / meta["judge"]).glob("*.jsonl")):
        rows = _jsonl(path)
        judgments[rows[0]["model"]] = rows
    return meta, official, answers, judgments


def _pairs(arena, category):
    from rlmt.benchmarks.arena_style import Pair, style_metadata

    meta, official, answers, judgments = arena
    baseline = meta["baselines"][category]
    pairs = []
    for model in official[category]["model_order"]:  # the official run's row order
        for row in judgments[model]:
            if row["category"] != category:
                continue
            labels = [g["score"] if g else None for g in row["games"]]
            pairs.append(Pair(model, row["uid"], labels[0], labels[1],
                              style_metadata(answers[model][row["uid"]]["messages"][-1]["content"]["answer"]),
                              style_metadata(answers[baseline][row["uid"]]["messages"][-1]["content"]["answer"])))
    return pairs


def test_arenahard_style_metadata_equals_the_official(arena):
    from rlmt.benchmarks.arena_style import style_metadata

    _, _, answers, _ = arena
    n = 0
    for model, rows in answers.items():
        for row in rows.values():
            official = {k: v if isinstance(v, int) else sum(v.values()) for k, v in row["metadata"].items()}
            assert style_metadata(row["messages"][-1]["content"]["answer"]) == official, (model, row["uid"])
            n += 1
    assert n == 6 * 120


@pytest.mark.parametrize("category", ["hard_prompt", "creative_writing"])
def test_arenahard_joint_style_control_moves_win_rates_as_the_official_fit(arena, category):
    from rlmt.benchmarks import arena_style

    official = arena[1][category]
    rows, dropped = arena_style.battle_rows(_pairs(arena, category))
    assert len(rows.outcomes) == official["n_rows"] and dropped > 0
    baseline = arena[0]["baselines"][category]
    raw = arena_style.raw_win_rates(rows)
    style = arena_style.win_rates(rows, style=True, baseline=baseline)
    optimum = arena_style.win_rates(rows, style=True, fit="optimum")
    moved = []
    for model, value in official["raw"].items():
        assert raw[model] == pytest.approx(value, abs=1e-12)
        ours_move = 100 * (style[model] - raw[model])
        official_move = 100 * (official["style_point"][model] - value)
        moved.append(abs(official_move))
        assert ours_move == pytest.approx(official_move, abs=0.1), (model, ours_move, official_move)
        # the optimum is a labelled variant: 50 official L-BFGS steps stop short of it
        assert abs(100 * optimum[model] - 100 * style[model]) < 1.0
    assert max(moved) > 0.9  # style control matters on this fixture (it would be a weak test otherwise)
    boot = arena_style.official_bootstrap(rows, True, rounds=100, seed=0, baseline=baseline)
    # the same seeded resamples; 50-step L-BFGS paths in float32 differ by rounding between torch and
    # numpy, which moves single resamples (and so the percentiles) by up to a few tenths of a point
    for model, (median, p05, p95) in official["style_bootstrap"].items():
        for ours, theirs in zip(boot[model], (median, p05, p95)):
            assert 100 * ours == pytest.approx(100 * theirs, abs=0.5), model


def test_arenahard_verdict_parsing_is_the_official_rule():
    from rlmt.judges.parsing import parse_arena_verdict, parse_arena_verdict_official

    replies = json.loads((AH / "replies.json").read_text())
    label_table = {"A>B", "A>>B", "A=B", "A<<B", "A<B", "B>A", "B>>A", "B=A", "B<<A", "B<A"}
    for r in replies:
        # official: a label outside its table would stop show_result (KeyError); ours: unparsed
        expected = r["official"] if r["official"] in label_table else None
        assert parse_arena_verdict_official(r["reply"]) == expected, r
    rescued = [r["reply"] for r in replies if r["official"] is None and parse_arena_verdict(r["reply"])]
    assert rescued == ["[[ B>A ]]"]  # what the lenient option reads that official does not


def test_report_joint_fit_over_every_cell_gives_the_official_leaderboard(arena, tmp_path):
    """The report stage reads each model's judgments.jsonl (as `rlmt eval judge` writes them) and
    fits all models jointly: the official leaderboard's numbers, per category."""
    from rlmt.benchmarks.arena_style import style_metadata
    from rlmt.report.arena_joint import joint_leaderboards, joint_table, markdown

    meta, official, answers, judgments = arena
    for model, rows in judgments.items():
        out = tmp_path / model / "arenahard-v2"
        out.mkdir(parents=True)
        with (out / "judgments.jsonl").open("w") as fh:
            for row in rows:
                base = meta["baselines"][row["category"]]
                common = {"id": row["uid"], "protocol": "official", "category": row["category"], "baseline": base,
                          "style": style_metadata(answers[model][row["uid"]]["messages"][-1]["content"]["answer"]),
                          "baseline_style": style_metadata(answers[base][row["uid"]]["messages"][-1]["content"]["answer"])}
                for game, g in zip(("game1", "game2"), row["games"]):
                    label = g["score"] if g else None
                    fh.write(json.dumps({**common, "game": game, "parsed": label, "ok": label is not None}) + "\n")
    # models in the official run's order (its float32 L-BFGS stop depends on the row order)
    boards = joint_leaderboards(official["hard_prompt"]["model_order"], tmp_path, official_rounds=100, our_rounds=10)
    assert set(boards) == {"hard_prompt", "creative_writing"}
    for category, board in boards.items():
        assert board.baseline == meta["baselines"][category]
        for model, value in official[category]["style_point"].items():
            assert board.style_controlled[model] == pytest.approx(100 * value, abs=0.1), (category, model)
            assert board.raw[model] == pytest.approx(100 * official[category]["raw"][model], abs=1e-9)
    table = joint_table(boards)
    assert table.height == 8 and "| creative_writing | plain-short |" in "\n".join(markdown(table))

    # The main table's AH2: the number the official leaderboard shows -- the median of the official
    # bootstrap of the joint hard_prompt fit -- for a model judged under the official protocol, the
    # point estimate kept beside it, labelled; a paper-protocol row keeps its pooled cell-alone headline.
    from rlmt.report.arena_joint import with_joint_headline
    from rlmt.report.tables import Row, main_table

    official_model, paper_model = official["hard_prompt"]["model_order"][:2]
    rows = [Row(m, "b", "warm-start", "+ GRPO", True, None,
                {"arenahard-v2": {"value": 1.0, "ci_low": 0.0, "ci_high": 2.0, "protocol": protocol}})
            for m, protocol in ((official_model, "official"), (paper_model, "paper"))]
    got = main_table(with_joint_headline(rows, table), ["arenahard-v2"])
    by_model = {r["model"]: r["AH2"] for r in got.iter_rows(named=True)}
    median, p05, p95 = (100 * x for x in official["hard_prompt"]["style_bootstrap"][official_model])
    point = 100 * official["hard_prompt"]["style_point"][official_model]
    # 0.15: our replica's medians came within 0.11 point of the official ones on this fixture (measured,
    # every model, both categories; float32 L-BFGS paths differ by rounding between torch and numpy). This
    # model's official median and point estimate are 0.31 apart, more than twice that: the test tells them apart.
    assert abs(median - point) > 2 * 0.15
    assert by_model[official_model] == pytest.approx(median, abs=0.15)
    shown = rows[0].scores["arenahard-v2"]
    assert (shown["ci_low"], shown["ci_high"]) == pytest.approx((p05, p95), abs=0.5)
    assert shown["point_estimate"] == pytest.approx(point, abs=0.1)
    assert by_model[paper_model] == 1.0
    assert "official score [5, 95]" in "\n".join(markdown(table)) and "point estimate (not official)" in "\n".join(markdown(table))


# ---------------------------------------------------------------------- Creative Writing v3


def test_creative_writing_official_parsing_and_piece_scores(data_dir):
    from rlmt.benchmarks import get_benchmark
    from rlmt.judges.parsing import parse_rubric_official

    rows = json.loads((FIXTURES / "creative_writing" / "replies.json").read_text())
    bench = get_benchmark("creative-writing-v3", data_dir=str(data_dir))
    crit, neg = bench._criteria()
    official_parser = bench._parser(crit)
    n_rescued = n_scored = 0
    for row in rows:
        assert parse_rubric_official(row["reply"]) == row["official_parsed"], row["reply"][:80]
        parsed = official_parser(row["reply"])
        if parsed is None:  # official: no score parsed, piece skipped (its score() returns 0.0 for no pieces)
            assert row["official_parsed"] == {} or all(  # or every value dropped after inversion
                (20 - v if k in neg else v) > 20 for k, v in row["official_parsed"].items())
        else:
            n_scored += 1
            assert bench.piece_score(parsed, neg) == pytest.approx(5 * row["official_piece_0_20"], abs=1e-9)
        lenient = bench._parser(crit, "lenient")(row["reply"])
        n_rescued += parsed is None and lenient is not None
    assert n_scored >= 55
    # the lenient reading differs from official exactly where names are bold, bulleted or lower-case
    differs = [r for r in rows if r["official_parsed"] and bench._parser(crit, "lenient")(r["reply"])
               and bench.piece_score(bench._parser(crit, "lenient")(r["reply"]), neg) != 5 * r["official_piece_0_20"]]
    assert len(differs) >= 20
