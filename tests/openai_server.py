"""A local OpenAI-compatible chat-completions server for tests (teacher, judge, HTTP generation).

It is a real HTTP server on 127.0.0.1 speaking the chat-completions wire format. What it answers
is decided by a `responder(request_json) -> str` callable; failures are injected on purpose:

- ``latency_s``: sleep before answering;
- ``fail_every`` / ``fail_rate``: answer 429 or 500 (alternating) for some requests;
- ``malformed_rate``: answer 200 with a body that is not a valid completion;
- ``timeout_rate``: hold the request longer than the client's timeout (``hang_s``).

Every request is counted (``requests``), with its decoded body kept in ``log``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from requests.structures import CaseInsensitiveDict


def echo_responder(body: dict) -> str:
    """Default: echo the last user message."""
    return "echo: " + body["messages"][-1]["content"]


class LocalOpenAIServer:
    def __init__(self, responder: Callable[[dict], str] = echo_responder, *, latency_s: float = 0.0,
                 fail_rate: float = 0.0, malformed_rate: float = 0.0, timeout_rate: float = 0.0,
                 hang_s: float = 5.0, seed: int = 0, required_key: str | None = None):
        self.responder = responder
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self.malformed_rate = malformed_rate
        self.timeout_rate = timeout_rate
        self.hang_s = hang_s
        self.required_key = required_key
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.ok_responses = 0
        self.log: list[dict] = []
        self.headers_seen: list[CaseInsensitiveDict] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "LocalOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, code: int, payload: bytes, ctype: str = "application/json"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "local", "object": "model"}]}).encode())
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                with server.lock:
                    server.requests += 1
                    server.headers_seen.append(CaseInsensitiveDict(self.headers.items()))  # the SDK sends lower-case names
                    roll = server.rng.random()
                    roll2 = server.rng.random()
                if server.required_key and self.headers.get("Authorization") != f"Bearer {server.required_key}":
                    self._send(401, b'{"error": {"message": "bad key"}}')
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, b'{"error": {"message": "invalid json"}}')
                    return
                with server.lock:
                    server.log.append(body)
                if server.latency_s:
                    time.sleep(server.latency_s)
                if roll < server.timeout_rate:
                    time.sleep(server.hang_s)
                    self._send(504, b'{"error": {"message": "timeout"}}')
                    return
                if roll < server.timeout_rate + server.fail_rate:
                    code = 429 if roll2 < 0.5 else 500
                    self._send(code, json.dumps({"error": {"message": f"injected {code}"}}).encode())
                    return
                if roll < server.timeout_rate + server.fail_rate + server.malformed_rate:
                    self._send(200, b'{"choices": [{"mess')
                    return
                n = int(body.get("n", 1) or 1)
                texts = [server.responder(body) for _ in range(n)]
                payload = {
                    "id": f"chatcmpl-{server.requests}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "local"),
                    "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                                for i, t in enumerate(texts)],
                    "usage": {"prompt_tokens": sum(len(m.get("content", "").split()) for m in body.get("messages", [])),
                              "completion_tokens": sum(len(t.split()) for t in texts),
                              "total_tokens": 0},
                }
                payload["usage"]["total_tokens"] = payload["usage"]["prompt_tokens"] + payload["usage"]["completion_tokens"]
                with server.lock:
                    server.ok_responses += 1
                self._send(200, json.dumps(payload).encode())

        return Handler
