"""A scripted OpenAI-compatible chat-completions server on loopback, for the rubric reward's tests.

A real HTTP server (``ThreadingHTTPServer`` on 127.0.0.1, a port the OS picks) speaking the wire format of
``POST /v1/chat/completions``. What it answers is a script:

- ``reply(body) -> str``: the assistant text for a request (the tests' judges read the criteria and the answer
  from the prompt and grade by keywords, so a reply depends on the request's content only);
- ``faults``: a list consumed by the first requests, in arrival order, one fault per request: ``"429"`` (with
  ``Retry-After: 0``), ``"500"``, ``"503"``, ``"body"`` (200 with a truncated JSON body), ``"hang"`` (hold the
  request ``hang_s`` seconds, longer than the client's timeout, then 504);
- ``latency_s``: every answer waits this long (a slow judge that still answers);
- ``required_key``: requests without ``Authorization: Bearer <key>`` get 401.

Every request is recorded: ``requests`` (all), ``in_flight`` (received, not yet answered), ``answered`` (200 with a completion), ``digests`` (a digest of
each answered request's model, messages and sampling parameters, in order), ``headers_seen`` (names lower-cased).
The HTTP plumbing (port, start/stop, request checks, bodies) is tests/openai_server.py's ``LoopbackServer``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence

from openai_server import LoopbackHandler, LoopbackServer, completion_body, word_usage

FAULTS = ("429", "500", "503", "body", "hang")


def request_digest(body: dict) -> str:
    """What makes two requests the same question: model, messages, temperature, max_tokens."""
    key = {k: body.get(k) for k in ("model", "messages", "temperature", "max_tokens")}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class ScriptedOpenAIServer(LoopbackServer):
    model_id = "stub"
    bad_key_message = "invalid api key"
    truncated_body = b'{"choices": [{"message": {"content"'

    def __init__(self, reply: Callable[[dict], str], *, faults: Sequence[str] = (), latency_s: float = 0.0,
                 hang_s: float = 3.0, required_key: str | None = None):
        unknown = [f for f in faults if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; allowed: {FAULTS}")
        super().__init__()
        self.reply = reply
        self.faults = list(faults)
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.required_key = required_key
        self.requests = 0
        self.in_flight = 0  # requests received and not yet answered
        self.answered = 0
        self.faults_served: list[str] = []
        self.digests: list[str] = []
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []

    def handle_post(self, handler: LoopbackHandler) -> None:
        with self.lock:
            self.in_flight += 1
        try:
            self._answer(handler)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, handler: LoopbackHandler) -> None:
        raw = handler.read_raw()
        with self.lock:
            self.requests += 1
            self.headers_seen.append(handler.lower_headers())
            fault = self.faults.pop(0) if self.faults else None
            if fault:
                self.faults_served.append(fault)
        body = self.checked_json(handler, raw)
        if body is None:
            return
        if fault == "hang":
            time.sleep(self.hang_s)
            handler.send_error_message(504, "gateway timeout")
            return
        if fault in ("429", "500", "503"):
            handler.send_error_message(int(fault), f"scripted {fault}", {"Retry-After": "0"} if fault == "429" else None)
            return
        if fault == "body":
            handler.send_truncated()
            return
        if self.latency_s:
            time.sleep(self.latency_s)
        text = self.reply(body)
        payload = completion_body([text], model=body.get("model", "stub"), completion_id="chatcmpl-stub",
                                  created=int(time.time()), usage=word_usage(body, [text]))
        with self.lock:
            self.answered += 1
            self.digests.append(request_digest(body))
            self.bodies.append(body)
        handler.send(200, payload)


# ------------------------------------------------------------------ scripted judges and teachers


def _section(text: str, title: str) -> str:
    """The text under ``# <title>`` up to the next ``# `` heading line."""
    start = text.index(f"# {title}")
    body = text[start:].split("\n", 1)[1]
    lines = []
    for line in body.split("\n"):
        if line.startswith("# "):
            break
        lines.append(line)
    return "\n".join(lines).strip()


def _criteria(text: str) -> list[tuple[str, float]]:
    """(keyword, weight) per numbered criterion line: the keyword is the line's last word; a weight, if shown."""
    heading = "Criteria" if "# Criteria" in text else "Rubric"
    block = _section(text, heading)
    out = []
    for line in block.split("\n"):
        head, _, rest = line.partition(". ")
        if not head.strip().isdigit():
            continue
        weight = 1.0
        if rest.startswith("(weight "):
            w, _, rest = rest[len("(weight "):].partition(") ")
            weight = float(w)
        out.append((rest.split()[-1].strip(".,").lower(), weight))
    return out


def keyword_judge(body: dict) -> str:
    """A judge that holds a criterion when its last word occurs in the answer.

    Explicit prompts get a verdict list; implicit prompts a score ``round(1 + 9 x earned share of the positive
    weight)``. Answers containing ``GARBLE`` get prose (never readable); ``GARBLE-ONCE`` gets prose until the
    conversation holds a repair request (an assistant turn), then a proper reply.
    """
    messages = body["messages"]
    first_user = next(m["content"] for m in messages if m["role"] == "user")
    answer = _section(first_user, "Answer to grade")
    repaired = any(m["role"] == "assistant" for m in messages)
    if "GARBLE" in answer and not ("GARBLE-ONCE" in answer and repaired):
        return "The answer seems decent overall, I would say it mostly works."
    crits = _criteria(first_user)
    held = [kw in answer.lower() for kw, _ in crits]
    if "# Criteria" in first_user:
        return json.dumps({"verdicts": [{"criterion": i, "reason": "keyword check", "satisfied": h}
                                        for i, h in enumerate(held, 1)]})
    positive = sum(w for _, w in crits if w > 0)
    earned = sum(w for (_, w), h in zip(crits, held) if h)
    return "```json\n" + json.dumps({"reason": "keyword check", "score": round(1 + 9 * max(earned, 0) / positive)}) + "\n```"


def keyword_teacher(body: dict) -> str:
    """A rubric writer: criteria naming the prompt's capitalised words (weight 2 each) and one pitfall ('sorry').

    Prompts containing ``BADRUBRIC`` always get prose; ``FLAKY`` gets a criteria list without weights' numbers
    (unreadable) until the conversation holds a repair request.
    """
    messages = body["messages"]
    user = next(m["content"] for m in messages if m["role"] == "user")
    conversation = _section(user, "Conversation")
    repaired = any(m["role"] == "assistant" for m in messages)
    if "BADRUBRIC" in conversation:
        return "Here is a great rubric: be helpful and kind."
    if "FLAKY" in conversation and not repaired:
        return json.dumps({"criteria": [{"criterion": "Mentions something", "weight": "high"}]})
    words = sorted({w.strip("?.,!").lower() for w in conversation.split() if w[:1].isupper() and len(w) > 3})
    criteria = [{"criterion": f"The answer mentions {w}", "weight": 2} for w in words[:4]]
    criteria += [{"criterion": "The answer refuses by saying sorry", "weight": -1},
                 {"criterion": "The answer is written in plain English", "weight": 1}]
    return json.dumps({"criteria": criteria})


def length_judge(body: dict) -> str:
    """A judge whose grade varies with any text (for policies that write gibberish): implicit prompts get the score
    ``1 + len(answer) % 10``; explicit prompts hold criterion ``i`` when ``(len(answer) + i)`` is even."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    answer = _section(first_user, "Answer to grade")
    if "# Criteria" in first_user:
        n = len(_criteria(first_user))
        return json.dumps({"verdicts": [{"criterion": i, "satisfied": (len(answer) + i) % 2 == 0}
                                        for i in range(1, n + 1)]})
    return json.dumps({"reason": "length rule", "score": 1 + len(answer) % 10})
