"""The OpenAI-compatible HTTP backend against a real local server: concurrency, retries, the
SQLite cache, resumable files and keeping the API key out of everything written. Requests go through
the ``openai`` SDK (rlmt.chat_endpoint; its retry waits are tested in tests/test_judge_client.py)."""

from __future__ import annotations

import json

import pytest
from scripted_server import ScriptedServer

from rlmt.generation import GenerationError, SamplingParams, generate_file, make_generator, read_generations
from rlmt.generation.cache import CompletionCache
from rlmt.thinking import ZERO_NOTHINK

FAST_RETRY = {"backoff_s": 0.005, "max_backoff_s": 0.05, "max_retries": 12}
PARAMS = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=3)


def prompts(k: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"question {i}"}] for i in range(k)]


def test_concurrent_generation_in_prompt_order_and_cached(openai_server, tmp_path):
    server = openai_server(latency_s=0.02)
    cache = tmp_path / "cache.sqlite"
    gen = make_generator("openai", "local-model", base_url=server.base_url, concurrency=4, cache_path=cache, **FAST_RETRY)
    outs = gen.generate(prompts(6), SamplingParams(n=2, max_new_tokens=64, seed=3))
    assert [[c.text for c in o] for o in outs] == [[f"echo: question {i}"] * 2 for i in range(6)]
    assert all(c.finish_reason == "stop" and c.n_tokens == 3 for o in outs for c in o)
    assert server.requests == 12
    # One request per sample, each with its own seed; the sampling settings are passed through.
    first = [b for b in server.log if b["messages"][0]["content"] == "question 0"]
    assert sorted(b["seed"] for b in first) == [3, 4]
    assert {(b["temperature"], b["top_p"], b["max_tokens"], b["n"], b["model"]) for b in server.log} == \
        {(0.7, 0.95, 64, 1, "local-model")}
    gen.close()

    again = make_generator("openai", "local-model", base_url=server.base_url, cache_path=cache, **FAST_RETRY)
    assert again.generate(prompts(6), SamplingParams(n=2, max_new_tokens=64, seed=3)) == outs
    assert server.requests == 12  # everything came from the cache
    again.generate(prompts(6), SamplingParams(n=2, max_new_tokens=64, seed=4))
    assert server.requests == 24  # another seed is another request
    assert len(CompletionCache(cache)) == 24


def test_injected_failures_are_retried_and_a_rerun_sends_nothing(openai_server, tmp_path):
    server = openai_server(fail_rate=0.3, malformed_rate=0.2, timeout_rate=0.05, hang_s=1.0, seed=1)
    items = [(f"id-{i}", p) for i, p in enumerate(prompts(20))]
    out = tmp_path / "generations.jsonl"
    generate_file("local-model", items, out, PARAMS, backend="openai", base_url=server.base_url, concurrency=8,
                  timeout_s=0.4, progress=False, **FAST_RETRY)
    rows = read_generations(out)
    # The contract: every id answered once, in order. (Not how many successes the server sent: under load a
    # success slower than the 0.4 s timeout is retried and answered twice, and that is allowed.)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [i for i, _ in items]
    assert [r["output"] for r in rows] == [f"echo: question {i}" for i in range(20)]
    assert all(r["answer"] == r["output"] and r["well_formed"] and r["finish_reason"] == "stop" for r in rows)
    # Failures were injected and retried: the seeded server fails some of its first 20 requests whatever their order.
    assert server.requests > 20
    sent = server.requests

    generate_file("local-model", items, out, PARAMS, backend="openai", base_url=server.base_url, progress=False,
                  **FAST_RETRY)
    assert server.requests == sent
    # Even with the file gone, the cache beside it answers everything.
    out.unlink()
    generate_file("local-model", items, out, PARAMS, backend="openai", base_url=server.base_url, progress=False,
                  **FAST_RETRY)
    assert server.requests == sent and [r["output"] for r in read_generations(out)] == [r["output"] for r in rows]


def test_persistent_failures_raise_after_caching_the_successes(openai_server, tmp_path):
    server = openai_server(fail_rate=1.0)
    gen = make_generator("openai", "m", base_url=server.base_url, cache_path=tmp_path / "c.sqlite",
                         backoff_s=0.001, max_backoff_s=0.002, max_retries=2, progress=False)
    with pytest.raises(GenerationError, match=r"3 of 3 requests .* failed.*gave up after 3 attempts: HTTP (429|500)"):
        gen.generate(prompts(3), PARAMS)
    assert server.requests == 9


def test_client_errors_are_not_retried(openai_server):
    server = openai_server(required_key="sk-needed-00000000")
    gen = make_generator("openai", "m", base_url=server.base_url, max_retries=5, progress=False)
    with pytest.raises(GenerationError, match="HTTP 401: bad key"):
        gen.generate(prompts(1), PARAMS)
    assert server.requests == 1


def _authorization(headers: dict) -> str | None:
    """The Authorization header whatever case the client wrote its name in (HTTP names are case-insensitive)."""
    return next((v for k, v in headers.items() if k.lower() == "authorization"), None)


def test_api_key_is_sent_but_never_written_or_shown(openai_server, tmp_path, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    key = "sk-test-0123456789abcdef"
    server = openai_server(required_key=key)
    monkeypatch.setenv("RLMT_TEST_API_KEY", key)
    out = tmp_path / "gen.jsonl"
    generate_file("m", [("a", prompts(1)[0])], out, PARAMS, backend="openai", base_url=server.base_url,
                  api_key_env="RLMT_TEST_API_KEY", progress=False, **FAST_RETRY)
    assert _authorization(server.headers_seen[0]) == f"Bearer {key}"
    assert read_generations(out)[0]["output"] == "echo: question 0"
    for path in tmp_path.iterdir():
        assert key.encode() not in path.read_bytes(), path

    # A rejected key that the server echoes back (500s retried, then a final 401): masked in the error.
    wrong = "sk-wrong-key-99999999"
    monkeypatch.setenv("RLMT_TEST_API_KEY", wrong)
    with ScriptedServer([{"status": 500, "echo_auth": True}], default={"status": 401, "echo_auth": True}) as echo:
        gen = make_generator("openai", "m", base_url=echo.base_url, api_key_env="RLMT_TEST_API_KEY", **FAST_RETRY)
        with pytest.raises(GenerationError) as err:
            gen.generate(prompts(1), PARAMS)
    assert echo.requests == 2 and {h["authorization"] for h in echo.headers} == {f"Bearer {wrong}"}
    assert "HTTP 401: scripted 401 for Bearer ***" in str(err.value) and "sk-wrong-key" not in str(err.value)
    assert "Retrying request" in caplog.text  # the SDK's records were captured (DEBUG and up) ...
    assert key not in caplog.text and "sk-wrong-key" not in caplog.text  # ... and none holds a key

    monkeypatch.delenv("RLMT_TEST_API_KEY")
    with pytest.raises(GenerationError, match="environment variable RLMT_TEST_API_KEY is not set"):
        make_generator("openai", "m", base_url=server.base_url, api_key_env="RLMT_TEST_API_KEY")


def test_a_keyless_server_gets_no_authorization_header(openai_server, monkeypatch):
    """No api_key_env: no Authorization header at all. The SDK alone would send OPENAI_API_KEY from the
    environment to whatever server the config names."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-ambient-31415926535")
    server = openai_server()
    gen = make_generator("openai", "m", base_url=server.base_url, progress=False, **FAST_RETRY)
    assert gen.generate(prompts(1), PARAMS)[0][0].text == "echo: question 0"
    assert server.requests == 1 and _authorization(server.headers_seen[0]) is None


def test_stop_strings_are_enforced_when_the_server_ignores_them(openai_server, tmp_path):
    server = openai_server(responder=lambda body: "<response> hi there </response> and more")
    out = tmp_path / "gen.jsonl"
    generate_file("m", [("a", prompts(1)[0])], out, backend="openai", fmt=ZERO_NOTHINK, base_url=server.base_url,
                  progress=False, **FAST_RETRY)
    [row] = read_generations(out)
    assert row["output"] == "<response> hi there </response>"
    assert (row["answer"], row["well_formed"], row["finish_reason"]) == ("hi there", True, "stop")
    body = server.log[0]
    assert body["stop"] == ["</response>"] and body["max_tokens"] == 4096 and "include_stop_str_in_output" not in body
    meta = json.loads((tmp_path / "gen.jsonl.meta.json").read_text())
    assert meta["format"]["end_delimiter"] == "</response>"


def test_include_stop_str_in_output_is_sent_when_asked(openai_server):
    server = openai_server()
    gen = make_generator("openai", "m", base_url=server.base_url, include_stop_str_in_output=True,
                         extra_body={"top_k": 20}, **FAST_RETRY)
    gen.generate(prompts(1), SamplingParams(stop=["</response>"]))
    assert server.log[0]["include_stop_str_in_output"] is True and server.log[0]["top_k"] == 20
