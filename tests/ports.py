"""A free TCP port for a test's rendezvous or server: never a fixed number, so that two runs of the suite on one
machine (or a stray process) cannot collide on it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 now (bound to port 0, then released for the caller to use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
