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
The HTTP plumbing (port, start/stop, bodies) is tests/openai_server.py's ``LoopbackServer``.
"""

from __future__ import annotations

import time

from openai_server import LoopbackHandler, LoopbackServer, completion_body


class ScriptedServer(LoopbackServer):
    model_id = "scripted"
    quiet_errors = True  # a client that hung up on a hang: expected

    def __init__(self, script: list[dict], default: dict | None = None):
        super().__init__()
        self.script = list(script)
        self.default = dict(default or {})
        self.arrivals: list[float] = []
        self.headers: list[dict[str, str]] = []

    @property
    def requests(self) -> int:
        with self.lock:
            return len(self.arrivals)

    def handle_post(self, handler: LoopbackHandler) -> None:
        handler.read_raw()
        with self.lock:
            k = len(self.arrivals)
            self.arrivals.append(time.monotonic())
            self.headers.append(handler.lower_headers())
        step = self.script[k] if k < len(self.script) else self.default
        if step.get("status"):
            message = f"scripted {step['status']}"
            if step.get("echo_auth"):
                message += f" for {handler.headers.get('Authorization')}"
            handler.send_error_message(step["status"], message, step.get("headers"))
            return
        if step.get("malformed"):
            handler.send_truncated()
            return
        time.sleep(step.get("hang_s", 0.0))
        handler.send(200, completion_body(["ok"], model="scripted", completion_id=f"chatcmpl-{k}", created=0,
                                          usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}))
