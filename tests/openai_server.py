"""A local OpenAI-compatible chat-completions server for tests (teacher, judge, HTTP generation), and the
loopback HTTP plumbing that tests/scripted_server.py and tests/openai_stub_server.py build on.

``LocalOpenAIServer`` is a real HTTP server on 127.0.0.1 speaking the chat-completions wire format. What it
answers is decided by a `responder(request_json) -> str` callable; failures are injected on purpose:

- ``latency_s``: sleep before answering;
- ``fail_rate``: answer 429 or 500 (at random, about half each) for that share of requests;
- ``malformed_rate``: answer 200 with a body that is not a valid completion;
- ``timeout_rate``: hold the request longer than the client's timeout (``hang_s``), then 504.

Every request is counted (``requests``), with its decoded body kept in ``log`` and its headers in
``headers_seen`` (case-insensitive lookups).

The shared pieces: ``LoopbackServer`` (a ``ThreadingHTTPServer`` on 127.0.0.1 at a port the OS picks, ``base_url``,
``start``/``stop`` and a context manager; ``GET .../models``; the key, path and JSON checks of a request) and
``LoopbackHandler`` (reads the body, gives the headers with lower-case names, writes a completion, an OpenAI-style
error body or a cut-off body). A subclass of ``LoopbackServer`` only decides what to answer, in ``handle_post``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from requests.structures import CaseInsensitiveDict


def error_body(message: str) -> bytes:
    """An OpenAI-style error body."""
    return json.dumps({"error": {"message": message}}).encode()


def word_usage(body: dict, texts: list[str]) -> dict:
    """Token usage counted in words: the request's messages (prompt) and the replies (completion)."""
    usage = {"prompt_tokens": sum(len(str(m.get("content", "")).split()) for m in body.get("messages", [])),
             "completion_tokens": sum(len(t.split()) for t in texts)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def completion_body(texts: list[str], *, model: str, completion_id: str, created: int, usage: dict) -> bytes:
    """A chat-completion body with one assistant choice per text."""
    return json.dumps({
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                    for i, t in enumerate(texts)],
        "usage": usage,
    }).encode()


class LoopbackHandler(BaseHTTPRequestHandler):
    """Request plumbing; ``owner`` (the ``LoopbackServer``) is bound per server and decides the answers."""

    owner: "LoopbackServer"

    def log_message(self, *args):  # keep test output quiet
        pass

    def read_raw(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def lower_headers(self) -> dict[str, str]:
        """The request's headers with lower-case names (the SDK sends lower-case names, requests does not)."""
        return {name.lower(): value for name, value in self.headers.items()}

    def send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up first (a hang)
            pass

    def send_error_message(self, code: int, message: str, headers: dict | None = None) -> None:
        self.send(code, error_body(message), headers)

    def send_truncated(self) -> None:
        """HTTP 200 with a cut-off JSON body."""
        self.send(200, self.owner.truncated_body)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self.send(200, json.dumps({"object": "list", "data": [{"id": self.owner.model_id, "object": "model"}]}).encode())
        else:
            self.send_error_message(404, "not found")

    def do_POST(self):
        self.owner.handle_post(self)


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on 127.0.0.1 (a port the OS picks) whose POSTs go to ``handle_post``."""

    model_id = "local"  # what GET .../models lists
    bad_key_message = "bad key"
    truncated_body = b'{"choices": [{"mess'
    quiet_errors = False  # True: a connection the client dropped is not reported on stderr
    required_key: str | None = None

    def __init__(self):
        self.lock = threading.Lock()
        handler = type("Handler", (LoopbackHandler,), {"owner": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if self.quiet_errors:
            self._server.handle_error = lambda request, address: None
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def handle_post(self, handler: LoopbackHandler) -> None:
        raise NotImplementedError

    def checked_json(self, handler: LoopbackHandler, raw: bytes) -> dict | None:
        """The request's JSON body; None when it was answered already: 401 (key), 404 (path) or 400 (not JSON)."""
        if self.required_key and handler.headers.get("Authorization") != f"Bearer {self.required_key}":
            handler.send_error_message(401, self.bad_key_message)
            return None
        if not handler.path.rstrip("/").endswith("/chat/completions"):
            handler.send_error_message(404, "not found")
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            handler.send_error_message(400, "invalid json")
            return None


def echo_responder(body: dict) -> str:
    """Default: echo the last user message."""
    return "echo: " + body["messages"][-1]["content"]


class LocalOpenAIServer(LoopbackServer):
    def __init__(self, responder: Callable[[dict], str] = echo_responder, *, latency_s: float = 0.0,
                 fail_rate: float = 0.0, malformed_rate: float = 0.0, timeout_rate: float = 0.0,
                 hang_s: float = 5.0, seed: int = 0, required_key: str | None = None):
        super().__init__()
        self.responder = responder
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self.malformed_rate = malformed_rate
        self.timeout_rate = timeout_rate
        self.hang_s = hang_s
        self.required_key = required_key
        self.rng = random.Random(seed)
        self.requests = 0
        self.ok_responses = 0
        self.log: list[dict] = []
        self.headers_seen: list[CaseInsensitiveDict] = []

    def handle_post(self, handler: LoopbackHandler) -> None:
        raw = handler.read_raw()
        with self.lock:
            self.requests += 1
            self.headers_seen.append(CaseInsensitiveDict(handler.headers.items()))
            roll = self.rng.random()
            roll2 = self.rng.random()
        body = self.checked_json(handler, raw)
        if body is None:
            return
        with self.lock:
            self.log.append(body)
        if self.latency_s:
            time.sleep(self.latency_s)
        if roll < self.timeout_rate:
            time.sleep(self.hang_s)
            handler.send_error_message(504, "timeout")
            return
        if roll < self.timeout_rate + self.fail_rate:
            code = 429 if roll2 < 0.5 else 500
            handler.send_error_message(code, f"injected {code}")
            return
        if roll < self.timeout_rate + self.fail_rate + self.malformed_rate:
            handler.send_truncated()
            return
        n = int(body.get("n", 1) or 1)
        texts = [self.responder(body) for _ in range(n)]
        payload = completion_body(texts, model=body.get("model", "local"), completion_id=f"chatcmpl-{self.requests}",
                                  created=int(time.time()), usage=word_usage(body, texts))
        with self.lock:
            self.ok_responses += 1
        handler.send(200, payload)
