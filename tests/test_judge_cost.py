"""Judge token and cost accounting against the local server's usage numbers, computed by hand.

The test server (tests/openai_server.py) reports ``prompt_tokens`` = the number of
whitespace-separated words in the request's message contents and ``completion_tokens`` = the
words of its reply. Every expectation below is that count done by hand on the prompts the test
writes, times the configured price. Failed and retried requests carry no usage; cached replies
cost nothing and are counted apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlmt.config import JudgeSpec
from rlmt.judges.client import JudgePrompt, make_judge

SYSTEM = "You are a strict judge."                 # 5 words
USERS = ["Rate this answer.",                       # 3 words
         "Rate this answer on a scale.",            # 6 words
         "Rate this answer on a scale of one to ten please."]  # 11 words
REPLY = "Score: 7 out of 10"                        # 5 words
# prompt tokens (5 + 3) + (5 + 6) + (5 + 11) = 35; completion tokens 3 x 5 = 15
PROMPT_TOKENS, COMPLETION_TOKENS = 35, 15


def _prompts() -> list[JudgePrompt]:
    return [JudgePrompt([{"role": "system", "content": SYSTEM}, {"role": "user", "content": u}], max_tokens=16)
            for u in USERS]


def _spec(srv, **kw) -> JudgeSpec:
    return JudgeSpec(base_url=srv.base_url, api_key_env=None, concurrency=2, backoff_s=0.0, max_backoff_s=0.0,
                     **kw)


def test_tokens_and_cost_with_configured_prices(openai_server, tmp_path):
    srv = openai_server(lambda body: REPLY)
    judge = make_judge(_spec(srv, model="judge-x", price_input_per_mtok=2.0, price_output_per_mtok=8.0),
                       tmp_path / "cache.sqlite")
    replies = judge.complete_many(_prompts())
    assert [r.text for r in replies] == [REPLY] * 3
    assert [(r.prompt_tokens, r.completion_tokens) for r in replies] == [(8, 5), (11, 5), (16, 5)]
    u = judge.usage
    assert (u.prompt_tokens, u.completion_tokens, u.requests_sent, u.retries, u.failures, u.cache_hits) == \
        (PROMPT_TOKENS, COMPLETION_TOKENS, 3, 0, 0, 0)
    # (35 x 2.00 + 15 x 8.00) / 1e6 = (70 + 120) / 1e6
    assert u.cost_usd == pytest.approx(190e-6, rel=1e-12)
    assert u.to_dict()["cost_usd"] == pytest.approx(190e-6, rel=1e-12)

    # the same prompts again: all from the cache, nothing sent, nothing billed
    again = make_judge(_spec(srv, model="judge-x", price_input_per_mtok=2.0, price_output_per_mtok=8.0),
                       tmp_path / "cache.sqlite")
    assert [r.cached for r in again.complete_many(_prompts())] == [True] * 3
    assert srv.requests == 3
    assert (again.usage.cache_hits, again.usage.requests_sent, again.usage.prompt_tokens) == (3, 0, 0)
    assert again.usage.cost_usd == 0.0


def test_built_in_price_table_and_unknown_models(openai_server, tmp_path):
    srv = openai_server(lambda body: REPLY)
    judge = make_judge(_spec(srv, model="gpt-4o"), tmp_path / "a.sqlite")
    judge.complete_many(_prompts())
    # gpt-4o list price: $2.50 in, $10.00 out per 1M tokens -> (35 x 2.5 + 15 x 10) / 1e6
    assert judge.usage.cost_usd == pytest.approx(237.5e-6, rel=1e-12)
    unknown = make_judge(_spec(srv, model="some-local-judge"), tmp_path / "b.sqlite")
    unknown.complete_many(_prompts())
    assert unknown.usage.prompt_tokens == PROMPT_TOKENS and unknown.usage.cost_usd is None  # no made-up price


def test_retried_and_failed_requests_add_no_tokens(openai_server, tmp_path):
    """Injected 429/500s are retried: more requests, the same tokens. A prompt that never gets an
    answer is a failure and costs nothing."""
    flaky = openai_server(lambda body: REPLY, fail_rate=0.5, seed=7)
    judge = make_judge(_spec(flaky, model="judge-x", max_retries=20, price_input_per_mtok=1.0,
                             price_output_per_mtok=1.0), tmp_path / "a.sqlite")
    assert all(r.error is None for r in judge.complete_many(_prompts()))
    u = judge.usage
    assert flaky.requests == u.requests_sent == 3 + u.retries and u.retries > 0
    assert (u.prompt_tokens, u.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert u.cost_usd == pytest.approx(50e-6, rel=1e-12)

    down = openai_server(lambda body: REPLY, fail_rate=1.0)
    judge = make_judge(_spec(down, model="judge-x", max_retries=1, price_input_per_mtok=1.0,
                             price_output_per_mtok=1.0), tmp_path / "b.sqlite")
    assert all(r.error is not None for r in judge.complete_many(_prompts()))
    u = judge.usage
    assert (u.failures, u.requests_sent, u.retries, u.prompt_tokens, u.completion_tokens) == (3, 6, 3, 0, 0)
    assert u.cost_usd == 0.0


def test_concurrent_accounting_loses_no_count(openai_server, tmp_path):
    """80 prompts over 8 threads: prompt i has 5 + (i % 9 + 1) words, each reply 5 words."""
    srv = openai_server(lambda body: REPLY, latency_s=0.005)
    prompts = [JudgePrompt([{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": " ".join(["word"] * (i % 9 + 1)) + f" #{i}"}])
               for i in range(80)]
    judge = make_judge(_spec(srv, model="judge-x", price_input_per_mtok=3.0, price_output_per_mtok=15.0)
                       .model_copy(update={"concurrency": 8}), tmp_path / "c.sqlite")
    judge.complete_many(prompts)
    # words per prompt: 5 (system) + (i % 9 + 1) + 1 (the "#i" tag). Over 80 prompts: 80 x 6 = 480,
    # plus i % 9 + 1 over eight full cycles (8 x 45 = 360) and 1..8 for i = 72..79 (36): 876
    expected_prompt = 876
    assert (judge.usage.prompt_tokens, judge.usage.completion_tokens, judge.usage.requests_sent) == \
        (expected_prompt, 400, 80)
    assert judge.usage.cost_usd == pytest.approx((expected_prompt * 3.0 + 400 * 15.0) / 1e6, rel=1e-12)


def test_judge_cli_reports_the_cost_in_scores_and_mlflow(openai_server, tmp_path, mlflow_uri):
    """`rlmt eval judge`: scores.json and the MLflow run carry the tokens the server reported."""
    import yaml
    from mlflow.tracking import MlflowClient
    from test_judge_responders import judge_responder, marked_answers, write_generations
    from typer.testing import CliRunner

    from rlmt.cli import app

    replies: list[str] = []

    def counting_responder(body):
        text = judge_responder(body)
        replies.append(text)
        return text

    srv = openai_server(counting_responder)
    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config/config.yaml").read_text())
    cfg["evaluation"]["judges"] = {"local": {"base_url": srv.base_url, "model": "judge-x", "api_key_env": None,
                                             "price_input_per_mtok": 4.0, "price_output_per_mtok": 12.0,
                                             "cache_path": str(tmp_path / "judge.sqlite")}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ids = ["wb-001", "wb-002", "wb-003", "wb-004", "wb-005", "wb-006"]
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, {"wb-001", "wb-003"}))
    fixture = repo / "tests/fixtures/judged/wildbench/wildbench_v2.jsonl"
    res = CliRunner().invoke(app, ["eval", "judge", "--bench", "wildbench", "--config", str(config),
                                   "--generations", str(gens), "--out-judgments", str(tmp_path / "j.jsonl"),
                                   "--out", str(tmp_path / "s.json"), "--option", f"path={fixture}"])
    assert res.exit_code == 0, res.output
    # the server's own usage numbers: words of what it received and of what it answered
    prompt_tokens = sum(len(m["content"].split()) for body in srv.log for m in body["messages"])
    completion_tokens = sum(len(t.split()) for t in replies)
    assert len(srv.log) == len(replies) == 6 and prompt_tokens > 1000
    cost = (prompt_tokens * 4.0 + completion_tokens * 12.0) / 1e6
    usage = json.loads((tmp_path / "s.json").read_text())["extra"]["judge"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["requests_sent"]) == \
        (prompt_tokens, completion_tokens, 6)
    assert usage["cost_usd"] == pytest.approx(cost, rel=1e-12)
    assert f"cost_usd={usage['cost_usd']}" in res.output
    client = MlflowClient(mlflow_uri)
    run = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id],
                             filter_string="tags.`rlmt.stage` = 'judge'")[0]
    assert run.data.metrics["judge.prompt_tokens"] == prompt_tokens
    assert run.data.metrics["judge.completion_tokens"] == completion_tokens
    assert run.data.metrics["judge.cost_usd"] == pytest.approx(cost, rel=1e-12)
