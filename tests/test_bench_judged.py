"""The judged benchmarks end to end against the local OpenAI-compatible server: WildBench and
ArenaHard v2 on fixtures in their official formats, AlpacaEval 2 and Creative Writing v3 on
../shared/data, the planning-trait analysis, and the CLI's errors. Expected scores follow by hand
from the answer markers (see test_judge_responders)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_judge_responders import judge_responder, marked_answers, write_generations
from typer.testing import CliRunner

from rlmt.benchmarks.judging import judge_benchmark
from rlmt.judges.cache import JudgeCache
from rlmt.judges.client import HTTPJudge

FIX = Path(__file__).parent / "fixtures" / "judged"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def judge(openai_server, tmp_path):
    srv = openai_server(judge_responder)
    client = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "cache.sqlite"), concurrency=4, backoff_s=0.01)
    client.server = srv
    return client


def test_wildbench_reward_paper_and_official_length_penalty(judge, tmp_path):
    ids = ["wb-001", "wb-002", "wb-003", "wb-004", "wb-005", "wb-006"]
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, {"wb-001", "wb-003", "wb-005"}))
    opts = {"path": str(FIX / "wildbench" / "wildbench_v2.jsonl"), "length_penalty_k": 100}
    res = judge_benchmark("wildbench", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge, options=opts,
                          protocol="both")
    # paper: 3 decisive wins (+100) and 3 slight losses (-50): (300 - 150) / 6 = 25
    assert res.metrics["paper.reward"].value == pytest.approx(25.0)
    assert res.metrics["score"].value == pytest.approx(25.0)
    # official, K=100: a slight loss to a reference more than 100 characters longer is a tie. The model's
    # answers are ~33 characters; references wb-002 (260 chars) and wb-006 (180) are > 133, wb-004 (45) is not.
    assert res.metrics["official.reward"].value == pytest.approx((300 - 50) / 6)
    assert res.extra["official"]["length_penalty_k"] == 100 and res.extra["paper"]["length_penalty_k"] is None
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert {r["protocol"] for r in rows} == {"paper", "official"} and all(r["ok"] for r in rows)
    # the multi-turn task carries its earlier turns into the judge prompt
    multi = [m["messages"][-1]["content"] for m in judge.server.log if "Give me five names" in m["messages"][-1]["content"]]
    assert multi and all("ASSISTANT: Sure! What style is your bakery?" in text for text in multi)


def test_wildbench_score_mode(judge, tmp_path):
    ids = ["wb-001", "wb-002", "wb-003", "wb-004", "wb-005", "wb-006"]
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, {"wb-001", "wb-002"}))
    res = judge_benchmark("wildbench", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge,
                          options={"path": str(FIX / "wildbench" / "wildbench_v2.jsonl"), "mode": "score"})
    # WB-Score: (s - 5) * 2 * 10 -> 8 gives 60, 3 gives -40; (2 * 60 + 4 * -40) / 6
    assert res.metrics["score"].value == pytest.approx((120 - 160) / 6)


def test_arenahard_two_games_raw_and_style_controlled_with_cis(judge, tmp_path):
    ids = ["ah-01", "ah-02", "ah-03", "ah-04", "ah-05", "ah-06"]
    answers = marked_answers(ids, {"ah-01", "ah-02", "ah-05"})
    answers["ah-01"] = "## Plan\n- **fast** ZQMODEL ZQGOOD\n- doubling\n" + "word " * 200  # long and formatted
    gens = write_generations(tmp_path / "g.jsonl", ids, answers, missing_answer={"ah-06"})
    res = judge_benchmark("arenahard-v2", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge,
                          options={"questions": str(FIX / "arena-hard-v2.0" / "question.jsonl"), "bootstrap": 50},
                          protocol="both")
    assert judge.server.requests == 10  # 5 answered items x 2 games with swapped positions
    games = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines() if '"paper"' in line]
    assert sorted((g["game"], g["candidate"]) for g in games if g["id"] == "ah-01") == [("game1", "B"), ("game2", "A")]
    # paper: win 1 / loss 0 per game (ah-06 has no answer: both games lost); categories apart
    assert res.metrics["paper.hard_prompt.win_rate"].value == pytest.approx(50.0)
    assert res.metrics["paper.creative_writing.win_rate"].value == pytest.approx(50.0)
    assert res.metrics["paper.pooled.win_rate"].value == pytest.approx(50.0)
    # official: weighted rows; ah-06's two games are decisive losses (3 rows each)
    assert res.metrics["official.hard_prompt.win_rate"].value == pytest.approx(50.0)
    assert res.metrics["official.creative_writing.win_rate"].value == pytest.approx(100 * 2 / 8)
    assert res.metrics["official.pooled.win_rate"].value == pytest.approx(100 * 6 / (6 + 4 + 6))
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["protocol"] == "both"
    for proto in ("paper", "official"):
        for group in ("hard_prompt", "creative_writing", "pooled"):
            for metric in ("win_rate", "style_controlled_alone"):
                m = scores["metrics"][f"{proto}.{group}.{metric}"]
                assert m["ci_low"] is not None and m["ci_low"] <= m["value"] + 1e-9 <= m["ci_high"] + 2e-9, (proto, metric, m)
        assert set(scores["extra"][proto]["official_bootstrap"]) == {"hard_prompt", "creative_writing", "pooled"}
    assert scores["metrics"]["score"] == scores["metrics"]["paper.pooled.style_controlled_alone"]
    assert scores["extra"]["official"]["headline"] == "hard_prompt.style_controlled_alone"
    assert scores["n_failed"] == 1 and scores["extra"]["paper"]["generation_failures"] == 1
    assert set(scores["extra"]["paper"]["missing_answers"]) == {"ah-06"}
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert all({"style", "baseline_style", "category", "baseline"} <= set(r) for r in rows)
    assert rows[0]["style"]["token_len"] > 0
    creative = [m for m in judge.server.log if "lighthouse" in m["messages"][-1]["content"]]
    hard = [m for m in judge.server.log if "irrational" in m["messages"][-1]["content"]]
    assert creative and "Before judging, write your own answer" not in creative[0]["messages"][0]["content"]
    assert hard and "Before judging, write your own answer" in hard[0]["messages"][0]["content"]


def test_creative_writing_rubric(judge, data_dir, tmp_path):
    from rlmt.benchmarks import get_benchmark

    items = get_benchmark("creative-writing-v3").load_items(data_dir, limit=6)
    ids = [it.id for it in items]
    assert len(get_benchmark("creative-writing-v3").load_items(data_dir)) == 96  # 32 prompts x 3 seeds
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, set(ids[:2])))
    res = judge_benchmark("creative-writing-v3", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge,
                          data_dir=data_dir, limit=6)
    # GOOD: positives 16, flaws 4 -> 16 everywhere -> 80; BAD: positives 8, flaws 12 -> 8 -> 40
    assert res.metrics["score"].value == pytest.approx((2 * 80 + 4 * 40) / 6)
    assert res.extra["n_criteria"] == 22 and res.extra["n_negative"] == 9 and res.protocol == "paper"
    prompt = judge.server.log[0]["messages"][-1]["content"]
    # Count only the rubric's bullets: a writing prompt may hold bullet lines of its own.
    cw = data_dir / "benchmarks" / "creativewritingv3"
    names = {line.strip() for f in ("criteria.txt", "negative_criteria.txt")
             for line in (cw / f).read_text().splitlines() if line.strip()}
    rubric = [(m.group(1), bool(m.group(2))) for m in re.finditer(r"^- (.+?)( \(flaw\))?$", prompt, re.M)
              if m.group(1) in names]
    assert len(rubric) == 22 and sum(flaw for _, flaw in rubric) == 9


def test_alpacaeval2_official_both_orders_with_lc(judge, data_dir, tmp_path):
    from rlmt.benchmarks import get_benchmark

    ids = [it.id for it in get_benchmark("alpacaeval2").load_items(data_dir, limit=40)]
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, set(ids[:30])))
    res = judge_benchmark("alpacaeval2", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge, data_dir=data_dir,
                          options={"df_gamed": str(FIX / "alpacaeval2" / "df_gamed.csv"), "both_orders": True},
                          protocol="official", limit=40)
    assert judge.server.requests == 80  # both orders
    assert res.metrics["win_rate"].value == pytest.approx(75.0)
    lc = res.metrics["lc_win_rate"]
    assert 0 < lc.value < 100 and lc.ci_low < lc.value < lc.ci_high
    assert res.extra["lc"]["estimator"].startswith("official") and res.metrics["score"] == lc


def test_alpacaeval2_official_without_tables_fails_before_judging(judge, data_dir, tmp_path):
    from rlmt.benchmarks.base import BenchmarkError
    from rlmt.benchmarks import get_benchmark

    ids = [it.id for it in get_benchmark("alpacaeval2").load_items(data_dir, limit=1)]
    gens = write_generations(tmp_path / "g.jsonl", ids, {ids[0]: "ZQMODEL ZQGOOD"})
    with pytest.raises(BenchmarkError, match="df_gamed.csv"):
        judge_benchmark("alpacaeval2", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge, data_dir=data_dir,
                        options={"df_gamed": str(tmp_path / "absent.csv")}, protocol="official", limit=1)
    assert judge.server.requests == 0


# ------------------------------------------------------------------ planning traits


def traits_responder(body: dict) -> str:
    text = body["messages"][-1]["content"]
    if "List 3 to 8 short planning characteristics" in text:
        if "revisit" in text.split("# The assistant's reasoning", 1)[1]:
            return json.dumps(["lists constraints first", "revisits earlier steps", "groups ideas into themes"])
        return json.dumps(["linear outline", "sections and subsections", "no revision"])
    if "Name 1 to 3 concise differences" in text:
        return json.dumps([{"trait": "revisits and refines earlier parts", "more_in": "B"}])
    if "Merge duplicates" in text:
        return json.dumps(["revisits and refines earlier parts", "plans with a linear outline"])
    if "Which reasoning shows this trait" in text:
        a = text.split("# Reasoning A", 1)[1].split("# Reasoning B", 1)[0]
        b = text.split("# Reasoning B", 1)[1]
        word = "revisit" if "revisits" in text.split("# User prompt", 1)[0] else "outline"
        has_a, has_b = word in a, word in b
        return json.dumps({"winner": "tie" if has_a == has_b else ("A" if has_a else "B")})
    raise AssertionError(text[:200])


def test_planning_traits_cli_table_and_figure(openai_server, tmp_path, mlflow_uri):
    import yaml

    from rlmt.cli import app

    srv = openai_server(traits_responder)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["evaluation"]["judges"] = {"mini": {"base_url": srv.base_url, "model": "judge-mini", "api_key_env": None,
                                            "cache_path": str(tmp_path / "cache.sqlite")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))

    def write(path, thoughts):
        with open(path, "w") as fh:
            for i, t in enumerate(thoughts):
                fh.write(json.dumps({"id": f"p{i}", "prompt": [{"role": "user", "content": f"task {i}"}],
                                     "thought": t, "answer": "x", "answer_found": True}) + "\n")
        return path

    sft = write(tmp_path / "a.jsonl", ["outline: intro, body, end"] * 4)
    rlmt = write(tmp_path / "b.jsonl", ["list constraints, draft, then revisit the draft"] * 3 + ["outline only"])
    res = CliRunner().invoke(app, ["eval", "traits", "--generations-a", str(sft), "--generations-b", str(rlmt),
                                   "--name-a", "SFT", "--name-b", "RLMT", "--out-dir", str(tmp_path / "traits"),
                                   "--config", str(tmp_path / "cfg.yaml"), "--batch-size", "2", "--n-batches", "3"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "traits" / "traits.json").read_text())
    rates = {t["trait"]: t["win_rate_a"] for t in doc["traits"]}
    # "revisits": RLMT shows it on 3 prompts, 1 tie -> SFT wins (0 + 0.5) / 4; "linear outline": SFT 3 wins, 1 tie
    assert rates == {"revisits and refines earlier parts": pytest.approx(12.5),
                     "plans with a linear outline": pytest.approx(87.5)}
    assert (tmp_path / "traits" / "traits.png").stat().st_size > 1000
    table = (tmp_path / "traits" / "traits.md").read_text()
    assert "| revisits and refines earlier parts | 0 | 3 | 1 | 0 | 12.5 |" in table
    assert srv.requests == 8 + 3 + 1 + 8  # extract, compare, summarize, head-to-head


def test_judge_cli_errors_name_the_problem(tmp_path, mlflow_uri):
    from rlmt.cli import app

    gens = write_generations(tmp_path / "g.jsonl", ["0"], {"0": "x"})
    args = ["eval", "judge", "--generations", str(gens), "--out-judgments", str(tmp_path / "j.jsonl"),
            "--out", str(tmp_path / "s.json"), "--config", str(ROOT / "config" / "config.yaml")]
    res = CliRunner().invoke(app, args + ["--bench", "ifeval"])
    assert res.exit_code == 2 and "not a judged benchmark" in res.output
    res = CliRunner().invoke(app, args + ["--bench", "wildbench"])
    assert res.exit_code == 2 and "add one under evaluation.judges" in res.output
    res = CliRunner().invoke(app, args + ["--bench", "wildbench", "--protocol", "fancy"])
    assert res.exit_code == 2 and "unknown protocol 'fancy'" in res.output
