"""The judge client against a real local OpenAI-compatible HTTP server: retries under injected
failures, the persistent cache across a kill -9, non-retryable errors, and no API key anywhere.
The requests go through the ``openai`` SDK (rlmt.chat_endpoint): the scripted-server tests pin down
what it is trusted with (Retry-After, timeouts) and what our own code adds (the configured backoff,
asking again after a malformed 200, the key masked in errors and absent from logs)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scripted_server import ScriptedServer
from test_judge_responders import judge_responder, marked_answers, write_generations
from typer.testing import CliRunner

from rlmt.benchmarks.judging import judge_benchmark
from rlmt.judges.cache import JudgeCache
from rlmt.judges.client import HTTPJudge, JudgePrompt

ROOT = Path(__file__).resolve().parents[1]


def _ae2_ids(data_dir: Path, n: int) -> list[str]:
    from rlmt.benchmarks import get_benchmark

    return [it.id for it in get_benchmark("alpacaeval2").load_items(data_dir, limit=n, seed=0)]


def test_judged_benchmark_completes_with_20pct_injected_failures(openai_server, data_dir, tmp_path):
    srv = openai_server(judge_responder, fail_rate=0.10, timeout_rate=0.05, malformed_rate=0.05, hang_s=1.0, seed=3)
    ids = _ae2_ids(data_dir, 20)
    good = set(ids[:15])
    gens = write_generations(tmp_path / "gens.jsonl", ids, marked_answers(ids, good))
    judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "cache.sqlite"), concurrency=4, max_retries=10,
                      timeout_s=0.4, backoff_s=0.01, max_backoff_s=0.05)
    result = judge_benchmark("alpacaeval2", gens, tmp_path / "j.jsonl", tmp_path / "scores.json", judge,
                             data_dir=data_dir, protocol="paper", limit=20)
    assert result.extra["judge_failures"] == 0 and result.n_failed == 0
    assert result.metrics["win_rate"].value == pytest.approx(75.0)  # 15 of 20 answers marked to win
    # failures really were injected and retried (the seeded server fails some of its first 20 requests, whatever
    # their order); how many successes it sent is not the contract: a success slower than the 0.4 s timeout is
    # retried and answered twice under load
    assert judge.usage.retries > 0 and srv.requests > 20
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["protocol"] == "paper" and scores["metrics"]["win_rate"]["value"] == pytest.approx(75.0)
    rows = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(ids) and all(r["ok"] for r in rows)  # every id judged once
    assert len(JudgeCache(tmp_path / "cache.sqlite")) == 20  # one reply kept per prompt
    # A rerun is answered from the cache: no request reaches the server.
    before = srv.requests
    judge2 = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "cache.sqlite"), timeout_s=0.4)
    judge_benchmark("alpacaeval2", gens, tmp_path / "j2.jsonl", tmp_path / "s2.json", judge2, data_dir=data_dir,
                    protocol="paper", limit=20)
    assert srv.requests == before and judge2.usage.cache_hits == 20


def test_parse_failures_are_counted_not_scored_as_losses(openai_server, data_dir, tmp_path):
    srv = openai_server(judge_responder)
    ids = _ae2_ids(data_dir, 10)
    answers = marked_answers(ids, good=set(ids[:4]), garble=set(ids[4:6]))  # 2 unparsable replies, both BAD
    gens = write_generations(tmp_path / "g.jsonl", ids, answers, missing_answer={ids[9]})
    judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), backoff_s=0.01)
    result = judge_benchmark("alpacaeval2", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge,
                             data_dir=data_dir, protocol="paper", limit=10)
    assert result.extra["judge_failures"] == 2 and result.extra["generation_failures"] == 1
    assert srv.requests == 9  # the item without an answer is never sent
    # 8 scored items: 4 wins, 3 judged losses, 1 generation failure (a loss); the 2 unparsed are left out.
    assert result.metrics["win_rate"].value == pytest.approx(100 * 4 / 8)
    assert result.metrics["win_rate"].n == 8 and result.n_failed == 3


def test_client_errors_are_not_retried_and_never_echo_the_key(tmp_path, monkeypatch, caplog):
    """Two 500s are retried, a 401 is final; every error echoes the Authorization header it got (as some
    proxies do): the replies' errors mask it, and no log record (SDK, httpx, ours, at DEBUG) holds it."""
    import logging

    secret = "sk-wrong-000000000000"
    monkeypatch.setenv("RLMT_TEST_JUDGE_KEY", secret)
    caplog.set_level(logging.DEBUG)
    script = [{"status": 500, "echo_auth": True}] * 2
    with ScriptedServer(script, default={"status": 401, "echo_auth": True}) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), api_key_env="RLMT_TEST_JUDGE_KEY",
                          concurrency=1, max_retries=5, backoff_s=0.01, max_backoff_s=0.02)
        replies = judge.complete_many([JudgePrompt([{"role": "user", "content": f"hi {i}"}]) for i in range(3)])
    # prompt 0: 500, 500, then 401 (final); prompts 1 and 2: one 401 each, never retried
    assert srv.requests == 5 and judge.usage.requests_sent == 5 and judge.usage.retries == 2
    assert {h["authorization"] for h in srv.headers} == {f"Bearer {secret}"}  # the key was really sent ...
    assert all(r.text is None and "HTTP 401" in r.error for r in replies)
    assert all("***" in r.error and secret not in r.error and "sk-wrong" not in r.error for r in replies)  # ... masked
    assert "gave up after 3 attempts" in replies[0].error
    assert "Retrying request" in caplog.text  # the SDK's own retry notice: its records were captured ...
    assert "sk-wrong" not in caplog.text  # ... and none holds the key
    assert judge.usage.failures == 3 and len(JudgeCache(tmp_path / "c.sqlite")) == 0


def test_retry_after_is_honoured(tmp_path):
    """A 429 with ``Retry-After: 1`` is retried after at least 1 s, although the configured backoff is 1-2 ms.

    Timing: only a lower bound, which a slow machine cannot break (the client sleeps the hint before it resends)."""
    with ScriptedServer([{"status": 429, "headers": {"Retry-After": "1"}}]) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), max_retries=3, backoff_s=0.002,
                          max_backoff_s=0.002, timeout_s=120)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
    assert reply.text == "ok" and reply.error is None
    assert srv.requests == 2 and (judge.usage.requests_sent, judge.usage.retries) == (2, 1)
    assert srv.arrivals[1] - srv.arrivals[0] >= 0.95


def test_configured_backoff_replaces_the_sdk_default(tmp_path):
    """A 500 without a hint waits backoff_s x U(0.5, 1) = at least 1 s with backoff_s = 2; the SDK's own first
    delay would be at most 0.5 s. (Lower bound only, as above.)"""
    with ScriptedServer([{"status": 500}]) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), max_retries=2, backoff_s=2.0,
                          max_backoff_s=2.0, timeout_s=120)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
    assert reply.text == "ok" and srv.requests == 2
    assert srv.arrivals[1] - srv.arrivals[0] >= 0.95


def test_timeouts_are_retried(tmp_path):
    """The first request hangs past timeout_s: the SDK gives up on it and sends the prompt again."""
    with ScriptedServer([{"hang_s": 5.0}]) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), max_retries=6, timeout_s=1.0,
                          backoff_s=0.01, max_backoff_s=0.02)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
        # (a loaded machine may time out a later attempt too: at least one retry, not exactly one)
        assert reply.text == "ok" and srv.requests >= 2 and judge.usage.retries >= 1
    with ScriptedServer([], default={"hang_s": 5.0}) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "d.sqlite"), max_retries=1, timeout_s=0.5,
                          backoff_s=0.01, max_backoff_s=0.02)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
        assert reply.text is None and reply.error == "gave up after 2 attempts: timed out after 0.5 s"
        assert srv.requests == 2 and judge.usage.failures == 1


def test_malformed_200_is_asked_again_within_the_retry_budget(tmp_path):
    """The SDK does not retry a 200 whose body is not a completion; the endpoint asks again, at most
    max_retries + 1 requests in all, then reports it as a failure."""
    with ScriptedServer([{"malformed": True}]) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "c.sqlite"), max_retries=2, backoff_s=0.01,
                          max_backoff_s=0.02, timeout_s=120)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
    assert reply.text == "ok" and srv.requests == 2 and judge.usage.retries == 1
    with ScriptedServer([], default={"malformed": True}) as srv:
        judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(tmp_path / "d.sqlite"), max_retries=2, backoff_s=0.01,
                          max_backoff_s=0.02, timeout_s=120)
        [reply] = judge.complete_many([JudgePrompt([{"role": "user", "content": "hi"}])])
    assert reply.text is None and reply.error.startswith("gave up after 3 attempts: malformed completion")
    assert srv.requests == 3 and judge.usage.failures == 1 and len(JudgeCache(tmp_path / "d.sqlite")) == 0


def test_rerun_after_kill_9_requests_only_missing_items(openai_server, data_dir, tmp_path):
    srv = openai_server(judge_responder, latency_s=0.15)
    ids = _ae2_ids(data_dir, 30)
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, set(ids[::2])))
    cache = tmp_path / "cache.sqlite"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from rlmt.judges.cache import JudgeCache
        from rlmt.judges.client import HTTPJudge
        from rlmt.benchmarks.judging import judge_benchmark
        judge = HTTPJudge({srv.base_url!r}, "judge-x", JudgeCache({str(cache)!r}), concurrency=2)
        judge_benchmark("alpacaeval2", {str(gens)!r}, {str(tmp_path / "j.jsonl")!r}, {str(tmp_path / "s.json")!r},
                        judge, data_dir=Path({str(data_dir)!r}), protocol="paper", limit=30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 600  # the child's imports take minutes on a loaded 2-core machine
    cached = 0
    while time.time() < deadline and proc.poll() is None:
        if cache.exists():
            try:
                with sqlite3.connect(cache) as conn:
                    cached = conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
            except sqlite3.OperationalError:
                cached = 0
            if cached >= 10:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the judging finished before it could be killed"
    with sqlite3.connect(cache) as conn:
        cached = conn.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    assert 10 <= cached < 30
    assert not (tmp_path / "s.json").exists()
    before = srv.requests
    judge = HTTPJudge(srv.base_url, "judge-x", JudgeCache(cache), concurrency=2)
    result = judge_benchmark("alpacaeval2", gens, tmp_path / "j.jsonl", tmp_path / "s.json", judge,
                             data_dir=data_dir, protocol="paper", limit=30)
    assert srv.requests - before == 30 - cached  # counted at the server: only the missing items
    assert judge.usage.cache_hits == cached
    assert result.metrics["win_rate"].value == pytest.approx(50.0)


def test_no_api_key_in_logs_mlflow_or_artifacts(openai_server, data_dir, tmp_path, mlflow_uri, monkeypatch):
    import yaml

    from rlmt.cli import app

    secret = "sk-fake-9f8e7d6c5b4a39281706"
    monkeypatch.setenv("RLMT_JUDGE_API_KEY", secret)
    srv = openai_server(judge_responder, required_key=secret, fail_rate=0.2, seed=1)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["evaluation"]["judges"] = {"local-judge": {"base_url": srv.base_url, "model": "judge-x",
                                                   "api_key_env": "RLMT_JUDGE_API_KEY", "max_retries": 8,
                                                   "backoff_s": 0.01, "timeout_s": 5,
                                                   "cache_path": str(tmp_path / "cache.sqlite")}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    from rlmt.benchmarks import get_benchmark
    from rlmt.benchmarks.item_files import write_items

    items = write_items(get_benchmark("alpacaeval2").load_items(data_dir, limit=8), tmp_path / "items.jsonl")
    ids = _ae2_ids(data_dir, 8)
    gens = write_generations(tmp_path / "g.jsonl", ids, marked_answers(ids, set(ids[:6])))
    res = CliRunner().invoke(app, ["eval", "judge", "--bench", "alpacaeval2", "--generations", str(gens),
                                   "--out-judgments", str(tmp_path / "out" / "judgments.jsonl"),
                                   "--out", str(tmp_path / "out" / "scores.json"), "--config", str(tmp_path / "cfg.yaml"),
                                   "--data-dir", str(data_dir), "--items", str(items), "--model-name", "m1",
                                   "--protocol", "paper"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "out" / "scores.json").read_text())["metrics"]["win_rate"]["value"] == pytest.approx(75.0)
    # the key did reach the server (so it was really used) ...
    # (header names compared case-insensitively: the SDK writes "authorization")
    assert all({k.lower(): v for k, v in h.items()}.get("authorization") == f"Bearer {secret}"
               for h in srv.headers_seen)
    # ... but nothing written anywhere holds it: outputs, judge cache, MLflow store and artifacts, CLI output
    assert secret not in res.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "mlruns.db" for p in written) and any("artifacts" in str(p) or "mlruns" in str(p) for p in written)
    for path in written:
        assert secret.encode() not in path.read_bytes(), f"API key leaked into {path}"
    import mlflow

    run = mlflow.search_runs(experiment_names=["rlmt"], output_format="list")[0]
    assert run.info.run_name == "judge:alpacaeval2:m1"
    assert run.data.params["judge.api_key_env"] == "RLMT_JUDGE_API_KEY"
    assert secret not in json.dumps(run.data.params) + json.dumps(run.data.tags)
    assert run.data.metrics["judge.requests_sent"] >= 8


def test_judges_package_never_imports_benchmarks():
    """One direction of imports: rlmt.benchmarks uses rlmt.judges, never the other way round."""
    import ast

    offenders = []
    for path in sorted((ROOT / "rlmt" / "judges").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith("rlmt.benchmarks")]
    assert offenders == []
    assert (ROOT / "rlmt" / "benchmarks" / "judged.py").exists() and not (ROOT / "rlmt" / "judges" / "judged.py").exists()
