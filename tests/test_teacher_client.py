"""The teacher client (rlmt.data.teacher) over the openai SDK (rlmt.chat_endpoint), against loopback servers:
every prompt answered exactly once through the SDK's retries and a broken 200, a rerun sends nothing, a rejected
request fails alone with the key masked and a rerun asks only it, and a missing key sends no key at all."""

from __future__ import annotations

import pytest
from scripted_server import ScriptedServer

from rlmt.config import TeacherSpec
from rlmt.data.teacher import AnswerCache, TeacherClient, TeacherError, TeacherRequest


def _requests(client: TeacherClient, n: int) -> list[TeacherRequest]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": f"question {i}"}]
        out.append(TeacherRequest(client.cache_key(messages, 1), messages))
    return out


def _spec(srv: ScriptedServer, **kw) -> TeacherSpec:
    return TeacherSpec(base_url=srv.base_url, model="teacher-x", **{"api_key_env": None, "concurrency": 3,
                                                                     "max_retries": 6, "backoff_s": 0.001,
                                                                     "timeout_s": 30, **kw})


def test_every_prompt_is_answered_once_through_retries_and_a_rerun_sends_nothing(tmp_path):
    # 4 failures in all (a 429 with Retry-After, a cut-off 200, a 500, a 503): wherever they land, no prompt sees
    # more than 4 of its 7 allowed attempts (max_retries=6), so every prompt is answered.
    script = [{"status": 429, "headers": {"Retry-After": "0"}}, {"malformed": True}, {"status": 500}, {"status": 503}]
    with ScriptedServer(script) as srv:
        cache = AnswerCache(tmp_path / "cache.sqlite")
        client = TeacherClient(_spec(srv), cache)
        reqs = _requests(client, 5)
        answers = client.complete_many(reqs)
        assert answers == {r.key: "ok" for r in reqs}
        assert len(cache) == 5  # one cached answer per prompt
        assert client.requests_sent == srv.requests  # the client counts every request it sent, retries included

        sent = srv.requests
        again = TeacherClient(_spec(srv), cache)
        assert again.complete_many(reqs) == answers
        assert srv.requests == sent and again.requests_sent == 0 and again.cache_hits == 5
        cache.close()


def test_a_rejected_request_fails_alone_with_the_key_masked_and_a_rerun_asks_only_it(tmp_path, monkeypatch):
    secret = "sk-teacher-secret-4242"
    monkeypatch.setenv("RLMT_TEST_TEACHER_KEY", secret)
    # concurrency 1: the first prompt meets the 401 (which quotes the Authorization header it rejected)
    with ScriptedServer([{"status": 401, "echo_auth": True}]) as srv:
        cache = AnswerCache(tmp_path / "cache.sqlite")
        client = TeacherClient(_spec(srv, api_key_env="RLMT_TEST_TEACHER_KEY", concurrency=1), cache)
        reqs = _requests(client, 3)
        answers = client.complete_many(reqs)
        err = answers[reqs[0].key]
        assert isinstance(err, TeacherError) and "401" in str(err)
        assert secret not in str(err) and "***" in str(err)
        assert [answers[r.key] for r in reqs[1:]] == ["ok", "ok"]
        assert srv.requests == 3  # a 401 is not asked again: asking cannot fix a bad key
        assert srv.headers[1]["authorization"] == f"Bearer {secret}"

        rerun = TeacherClient(_spec(srv, api_key_env="RLMT_TEST_TEACHER_KEY", concurrency=1), cache)
        assert rerun.complete_many(reqs) == {r.key: "ok" for r in reqs}
        assert rerun.cache_hits == 2 and srv.requests == 4  # only the failed prompt was asked again
        cache.close()


def test_without_its_key_a_local_server_is_asked_without_one_and_a_remote_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("RLMT_UNSET_TEACHER_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leave-this-machine")  # the SDK's own fallback stays off
    with ScriptedServer([]) as srv:
        cache = AnswerCache(tmp_path / "cache.sqlite")
        client = TeacherClient(_spec(srv, api_key_env="RLMT_UNSET_TEACHER_KEY"), cache)
        reqs = _requests(client, 2)
        assert client.complete_many(reqs) == {r.key: "ok" for r in reqs}
        assert srv.headers and all("authorization" not in h for h in srv.headers)
        cache.close()
    remote = TeacherSpec(base_url="https://api.example.com/v1", model="m", api_key_env="RLMT_UNSET_TEACHER_KEY")
    other = AnswerCache(tmp_path / "other.sqlite")
    with pytest.raises(TeacherError, match="RLMT_UNSET_TEACHER_KEY is not set"):
        TeacherClient(remote, other)
    other.close()
