"""Traces cached as JSON files, keyed by what a trace depends on.

The key is a digest of the spec, of each model's configuration as found offline (the file's bytes,
or what a tiny-zoo config is built from), of the torch, transformers and TRL versions (read from the
installed distributions, without importing them) and of :data:`rlmt.memtrace.version.TRACER_VERSION`.
A warm lookup reads one small JSON file: milliseconds. The directory is the caller's.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

from rlmt.memtrace.model_config import config_fingerprint
from rlmt.memtrace.result import TraceResult
from rlmt.memtrace.spec import JobSpec
from rlmt.memtrace.version import TRACER_VERSION

VERSIONED = ("torch", "transformers", "trl")


def cache_key(spec: JobSpec) -> str:
    """Hex digest of everything the trace of `spec` depends on (module docstring)."""
    parts = {
        "spec": spec.to_dict(),
        "configs": {"policy": config_fingerprint(spec.model),
                    "reward": config_fingerprint(spec.reward_model) if spec.reward_model else None},
        "versions": {name: _version(name) for name in VERSIONED},
        "tracer": TRACER_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # TRL is optional for a PPO trace (bench/gpu_check on a bare machine)
        return None


def cached_trace(spec: JobSpec, cache_dir: str | Path) -> TraceResult:
    """The trace of `spec` from `cache_dir`, tracing (and storing) it when it is not there."""
    path = Path(cache_dir) / f"{cache_key(spec)}.json"
    if path.is_file():
        try:
            return TraceResult.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable entry (an older layout): trace again and replace it
    from rlmt.memtrace.tracer import trace

    result = trace(spec)
    _write_atomically(path, json.dumps(result.to_dict(), indent=1, sort_keys=True) + "\n")
    return result


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
