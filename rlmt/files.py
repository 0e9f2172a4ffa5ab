"""Files the workflow rereads on every start: rewritten only when their text changes, never half-written."""

from __future__ import annotations

from pathlib import Path


def replace_if_changed(path: str | Path, text: str) -> bool:
    """Write `text` to `path` through a temporary file and a rename, unless the file already holds exactly it
    (so its modification time, which Snakemake compares, moves only on a real change). True if it was written."""
    path = Path(path)
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True
