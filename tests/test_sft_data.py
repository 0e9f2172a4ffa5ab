"""Warm-start SFT data: the reference filters, the teacher over real HTTP (cache, retries, reruns), file input."""

from __future__ import annotations

import json
import sqlite3

import pytest

from rlmt.config import SFTDataSpec, SourceSpec, TeacherSpec
from rlmt.data.sft_data import PLANNING_INSTRUCTION, build_sft_data, parse_teacher_output

GOOD = "<think>\nPlan: greet, then list three tips.\n</think>\n<response>\nHere are three tips for you.\n</response>"


@pytest.mark.parametrize("text, want", [
    (GOOD, ("Plan: greet, then list three tips.", "Here are three tips for you.")),
    ("<think>plan</think><response>answer", ("plan", "answer")),  # a missing </response> is tolerated
    ("Sure! <think>plan</think><response>x</response>", "no_start_think"),
    ("<think>plan only</think> no response tag", "no_response_tag"),
    ("<think>a</think><think>b</think><response>x</response>", "multiple_think"),
    ("<think>a</think><response>x <response> y</response>", "stray_tags"),
    ("<think>a</think><response>x</response> trailing text", "stray_tags"),
    ("<think> </think><response>x</response>", "empty_thought"),
    ("<think>a</think><response> </response>", "empty_response"),
])
def test_parse_teacher_output_applies_the_reference_filters(text, want):
    assert parse_teacher_output(text) == want


def _prompts_file(tmp_path):
    rows = [
        {"id": "a", "messages": [{"role": "user", "content": "How can I keep my houseplants alive during a long holiday?"}]},
        {"id": "b", "messages": [{"role": "user", "content": "Write a short poem about the sea at night and the moon."}]},
        {"id": "c", "messages": [{"role": "user", "content": "Explain why the sky looks blue during the day to a child."}]},
        {"id": "d", "messages": [{"role": "user", "content": "Wie kann ich meine Zimmerpflanzen im Urlaub am Leben halten und gießen?"}]},
        {"id": "e", "messages": [{"role": "user", "content": "hi there, tell me a joke"},
                                 {"role": "assistant", "content": "ok"}, {"role": "user", "content": "another one please"}]},
        {"id": "f", "messages": [{"role": "user", "content": "How can I keep my houseplants alive during a long holiday?"}]},
        {"id": "g", "messages": "not a message list"},
    ]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _responder(body):
    """Well-formed answers, except the sea poem: malformed on the first try, fine on the second."""
    user = body["messages"][-1]["content"]
    if "sea at night" in user:
        state = _responder.__dict__.setdefault("sea_calls", [0])
        state[0] += 1
        if state[0] == 1:
            return "I will answer directly: the sea is dark."
        return "<think>\nImages: waves, moonlight.\n</think>\n<response>\nThe sea sleeps under the moon.\n</response>"
    return GOOD


def test_teacher_path_filters_caches_and_reruns_only_whats_missing(tmp_path, openai_server, monkeypatch):
    _responder.__dict__.pop("sea_calls", None)
    srv = openai_server(_responder, fail_rate=0.3, malformed_rate=0.1, seed=3, required_key="sk-test-123456")
    monkeypatch.setenv("TEACHER_KEY", "sk-test-123456")
    spec = SFTDataSpec(prompts=[SourceSpec(path=str(_prompts_file(tmp_path)), format="chat-jsonl", name="t")],
                       teacher=TeacherSpec(base_url=srv.base_url, model="teacher-x", api_key_env="TEACHER_KEY",
                                           concurrency=4, max_retries=8, backoff_s=0.01, timeout_s=5),
                       n_prompts=None)
    think, nothink = tmp_path / "think.jsonl", tmp_path / "nothink.jsonl"
    res = build_sft_data(spec, think, nothink, stats_path=tmp_path / "stats.json", cache_path=tmp_path / "cache.sqlite")

    counts = res.stats["counts"]
    assert counts["kept"] == 3 and counts["non_english"] == 1 and counts["multi_turn"] == 1
    assert counts["duplicate_id"] == 1 and counts["malformed_row"] == 1 and counts["try1_no_start_think"] == 1
    assert counts["rows_in"] == 7
    # every request carried the planning instruction, appended to the user turn
    assert all(b["messages"][-1]["content"].endswith("\n\n" + PLANNING_INSTRUCTION) for b in srv.log)
    think_rows = [json.loads(line) for line in think.read_text().splitlines()]
    nothink_rows = [json.loads(line) for line in nothink.read_text().splitlines()]
    assert [r["id"] for r in think_rows] == [r["id"] for r in nothink_rows]
    sea = next(r for r in think_rows if "sea" in r["messages"][0]["content"])
    assert sea["messages"][-1] == {"role": "assistant",
                                   "content": "<think>\nImages: waves, moonlight.\n</think>\n\nThe sea sleeps under the moon."}
    sea_n = next(r for r in nothink_rows if "sea" in r["messages"][0]["content"])
    assert sea_n["messages"][-1]["content"] == "The sea sleeps under the moon."
    assert PLANNING_INSTRUCTION not in think.read_text()
    quarantine = [json.loads(line) for line in (tmp_path / "stats.quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["reason"] for q in quarantine) == ["duplicate_id", "malformed_row", "multi_turn", "non_english"]
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 4  # 3 prompts + the sea retry

    # a rerun asks nothing: every answer comes from the cache, the output is identical
    before = srv.requests
    before_text = think.read_text()
    res2 = build_sft_data(spec, think, nothink, stats_path=tmp_path / "stats.json", cache_path=tmp_path / "cache.sqlite")
    assert srv.requests == before and res2.stats["counts"]["cache_hits"] == 4
    assert think.read_text() == before_text
    # the key never reaches the outputs
    for f in (think, nothink, tmp_path / "stats.json", tmp_path / "stats.quarantine.jsonl"):
        assert "sk-test-123456" not in f.read_text()


def test_file_source_quarantines_bad_rows(tmp_path):
    rows = [
        {"id": "1", "messages": [{"role": "user", "content": "Give me a recipe for a simple tomato soup please."}],
         "thought": "List ingredients, then steps.", "response": "Tomatoes, onion, stock. Simmer 20 minutes."},
        {"id": "2", "prompt": "Suggest a name for a friendly orange cat that likes to sleep.",
         "thought": "Think of warm names.", "response": "Marmalade."},
        {"id": "3", "prompt": "Tell me about the history of tea in Britain and its customs.",
         "thought": "bad <response> tag inside", "response": "Tea arrived in the 1600s."},
        {"id": "4", "prompt": "Where is the nearest star to our sun located in the sky?"},
    ]
    path = tmp_path / "teacher_out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{not json\n")
    spec = SFTDataSpec(path=str(path))
    res = build_sft_data(spec, tmp_path / "t.jsonl", tmp_path / "n.jsonl", stats_path=tmp_path / "s.json")
    c = res.stats["counts"]
    assert (c["kept"], c["stray_tags"], c["malformed_row"], c["invalid_json"], c["rows_in"]) == (2, 1, 1, 1, 5)
    first = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[1])
    assert first["messages"] == [{"role": "user", "content": "Suggest a name for a friendly orange cat that likes to sleep."},
                                 {"role": "assistant", "content": "<think>\nThink of warm names.\n</think>\n\nMarmalade."}]


def test_missing_key_is_a_clear_error(tmp_path, monkeypatch):
    from rlmt.data.teacher import TeacherError

    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    spec = SFTDataSpec(prompts=[SourceSpec(path=str(_prompts_file(tmp_path)), format="chat-jsonl")],
                       teacher=TeacherSpec(base_url="https://api.example.com/v1", model="m", api_key_env="NO_SUCH_KEY_VAR"))
    with pytest.raises(TeacherError, match="NO_SUCH_KEY_VAR is not set"):
        build_sft_data(spec, tmp_path / "t.jsonl", tmp_path / "n.jsonl")


def _teacher_row(i: int, prompt: str, response: str = "A short answer.") -> bytes:
    row = {"id": str(i), "prompt": prompt, "thought": "Plan the answer first.", "response": response}
    return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"


def _build_from_bytes(tmp_path, data: bytes):
    path = tmp_path / "teacher_out.jsonl"
    path.write_bytes(data)
    res = build_sft_data(SFTDataSpec(path=str(path)), tmp_path / "t.jsonl", tmp_path / "n.jsonl",
                         stats_path=tmp_path / "s.json")
    # every output is valid UTF-8 JSON lines (read as bytes, decoded strictly)
    # (split on "\n" only: str.splitlines would also break a line at a raw U+2028 inside a string)
    outs = {name: [json.loads(line) for line in (tmp_path / name).read_bytes().decode("utf-8").split("\n") if line]
            for name in ("t.jsonl", "n.jsonl", "s.quarantine.jsonl")}
    assert json.loads((tmp_path / "s.json").read_bytes().decode("utf-8")) == res.stats
    return res.stats["counts"], outs


def test_file_source_quarantines_lines_that_are_not_utf8(tmp_path):
    data = (_teacher_row(1, "Name three rivers in Europe and say where they flow.")
            + b'{"id": "2", "prompt": "Un caf\xe9 au lait, s\'il vous pla\xeet.", "thought": "t", "response": "r"}\n'
            + _teacher_row(3, "Explain what a caf\u00e9 is, in one sentence, for a curious child.")
            + b"\xff\xfe\x00garbage\n")
    counts, outs = _build_from_bytes(tmp_path, data)
    assert counts["rows_in"] == 4 and counts["kept"] == 2 and counts["invalid_utf8"] == 2
    dropped = [q["reason"] for q in outs["s.quarantine.jsonl"]]
    assert dropped == ["invalid_utf8", "invalid_utf8"]
    assert counts["rows_in"] == counts["kept"] + len(dropped)
    assert [q["row"]["line"] for q in outs["s.quarantine.jsonl"]] == [2, 4]
    # the rows around the bad lines are kept, their non-ASCII text intact
    assert [r["id"] for r in outs["t.jsonl"]] == ["1", "3"]
    assert outs["t.jsonl"][1]["messages"][0]["content"] == "Explain what a caf\u00e9 is, in one sentence, for a curious child."


def test_file_source_quarantines_lines_that_are_not_json_objects(tmp_path):
    data = (_teacher_row(1, "Name three rivers in Europe and say where they flow.")
            + b"{not json\n"
            + b"\n   \n"  # blank lines are no rows
            + b"[1, 2, 3]\n" + b'"just a string"\n' + b"null\n"
            + _teacher_row(2, "Suggest a title for a story about a lighthouse keeper.").replace(b"A short answer.",
                                                                                              b"The \\ud800 Keeper")
            + _teacher_row(3, "Write one line about the moon for a birthday card.", "Bright X moon.").replace(
                b"X", b"\\ud83d\\ude00")  # a paired surrogate escape: one real character
            + _teacher_row(4, "Give a one-line tip for learning to juggle three balls.").replace(b"\n", b"\r\n")
            + _teacher_row(5, "Describe a quiet morning in a small fishing harbour.", "Calm.\u2028Gulls call.")
            + b"[" * 100_000 + b"\n")
    counts, outs = _build_from_bytes(tmp_path, data)
    reasons = [(q["row"]["line"], q["reason"]) for q in outs["s.quarantine.jsonl"]]
    assert reasons == [(2, "invalid_json"), (5, "not_object"), (6, "not_object"), (7, "not_object"),
                       (8, "invalid_utf8"), (12, "invalid_json")]
    assert "surrogate" in outs["s.quarantine.jsonl"][4]["detail"]
    assert (counts["rows_in"], counts["kept"], counts["invalid_json"], counts["not_object"], counts["invalid_utf8"]) \
        == (10, 4, 2, 3, 1)
    assert counts["rows_in"] == counts["kept"] + len(reasons)
    # a paired surrogate escape is a real character, a CRLF ending is a line end, a raw U+2028 is no line break
    assert [r["id"] for r in outs["n.jsonl"]] == ["1", "3", "4", "5"]
    assert [r["messages"][-1]["content"] for r in outs["n.jsonl"]][1:] == \
        ["Bright \U0001F600 moon.", "A short answer.", "Calm.\u2028Gulls call."]


def test_a_prompt_the_teacher_keeps_failing_is_quarantined_and_a_rerun_asks_only_it(tmp_path, openai_server):
    """A prompt whose every request dies (the server drops the connection) costs max_retries + 1 requests, is
    quarantined as teacher_error with the reason, and never stops the others; a rerun asks only that prompt."""
    sea_prompt = "Write a short poem about the sea at night and the moon."  # prompt b of _prompts_file
    broken = {"sea": True}

    def responder(body):
        if broken["sea"] and "sea at night" in body["messages"][-1]["content"]:
            raise ConnectionAbortedError("injected: connection dropped without a reply")
        return GOOD

    srv = openai_server(responder)
    srv._server.handle_error = lambda request, address: None  # the dropped connections are on purpose
    spec = SFTDataSpec(prompts=[SourceSpec(path=str(_prompts_file(tmp_path)), format="chat-jsonl")],
                       teacher=TeacherSpec(base_url=srv.base_url, model="teacher-x", api_key_env=None, concurrency=2,
                                           max_retries=2, backoff_s=0.001, timeout_s=30),
                       n_prompts=None)
    args = dict(stats_path=tmp_path / "stats.json", cache_path=tmp_path / "cache.sqlite")

    counts = build_sft_data(spec, tmp_path / "t.jsonl", tmp_path / "n.jsonl", **args).stats["counts"]
    assert counts["kept"] == 2 and counts["teacher_error"] == 1  # houseplants, sky kept; the sea poem failed for good
    quarantine = [json.loads(line) for line in (tmp_path / "stats.quarantine.jsonl").read_text().splitlines()]
    failed = [q for q in quarantine if q["reason"] == "teacher_error"]
    assert [q["row"]["messages"][0]["content"] for q in failed] == [sea_prompt]
    assert "connection failed" in failed[0]["detail"]
    sea_asked = [b for b in srv.log if "sea at night" in b["messages"][-1]["content"]]
    assert len(sea_asked) == 3  # 1 request + max_retries=2 retries, then given up: a bounded, finite cost

    broken["sea"] = False
    seen = len(srv.log)
    counts = build_sft_data(spec, tmp_path / "t.jsonl", tmp_path / "n.jsonl", **args).stats["counts"]
    assert counts["kept"] == 3 and counts.get("teacher_error", 0) == 0 and counts["cache_hits"] == 2
    assert [b["messages"][-1]["content"] for b in srv.log[seen:]] == [f"{sea_prompt}\n\n{PLANNING_INSTRUCTION}"]
    kept = [json.loads(line)["messages"][0]["content"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert sorted(kept) == sorted(["How can I keep my houseplants alive during a long holiday?", sea_prompt,
                                   "Explain why the sky looks blue during the day to a child."])
