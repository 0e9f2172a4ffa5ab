"""A loopback chat-completions server that answers each request as a script says, for the client tests
that need one exact sequence (a 429 with ``Retry-After``, a hang, a 200 with a broken body, an error
that echoes the key it rejected) rather than tests/openai_server.py's random failures.

``ScriptedServer(script)``: request number ``k`` (from 0) gets ``script[k]``; requests past the end
get ``default``. A step is a dict:

- ``{}``: a normal completion whose content is ``"ok"`` (usage: 1 prompt token, 1 completion token);
- ``{"status": 429, "headers": {"Retry-After": "1"}}``: that status with an OpenAI-style error body;
  ``"echo_auth": True`` puts the request's ``Authorization`` header in the error message;
- ``{"hang_s": 3.0}``: wait that long, then answer normally (the client has usually given up);
- ``{"malformed": True}``: HTTP 200 with a cut-off JSON body.

It records, per request, the arrival time (``time.monotonic()``) and the headers with lower-case names.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    def __init__(self, script: list[dict], default: dict | None = None):
        self.script = list(script)
        self.default = dict(default or {})
        self.lock = threading.Lock()
        self.arrivals: list[float] = []
        self.headers: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda request, address: None  # a client that hung up on a hang: expected
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with server.lock:
                    k = len(server.arrivals)
                    server.arrivals.append(time.monotonic())
                    server.headers.append({name.lower(): value for name, value in self.headers.items()})
                step = server.script[k] if k < len(server.script) else server.default
                if step.get("status"):
                    message = f"scripted {step['status']}"
                    if step.get("echo_auth"):
                        message += f" for {self.headers.get('Authorization')}"
                    body = json.dumps({"error": {"message": message}}).encode()
                    self._send(step["status"], body, step.get("headers"))
                    return
                if step.get("malformed"):
                    self._send(200, b'{"choices": [{"mess')
                    return
                time.sleep(step.get("hang_s", 0.0))
                body = {"id": f"chatcmpl-{k}", "object": "chat.completion", "created": 0, "model": "scripted",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                self._send(200, json.dumps(body).encode())

        return Handler
