"""Reading JSON-lines files line by line: each non-blank line must be a UTF-8 JSON object; writing one whole.

One reader for every line-numbered JSONL input (reward pairs, SFT rows, benchmark generations,
teacher outputs). The file is read as bytes and each line decoded on its own, so one bad line
is one bad line, never a whole file that fails to decode. Lines are split on ``\\n`` only (a
``\\r\\n`` ending is fine): a JSON string may hold a raw U+2028 or U+0085, which
``str.splitlines`` would wrongly treat as line breaks.

A line is malformed, with one of these reasons, when it is

- ``invalid_utf8``: not UTF-8, or a JSON escape spelling a lone UTF-16 surrogate (``"\\ud800"``):
  ``json.loads`` accepts it, but the string it gives cannot be written as UTF-8 later;
- ``invalid_json``: not JSON (nesting too deep for the decoder included);
- ``not_object``: JSON, but not an object.

A caller that stops on a bad line passes ``error_cls``; one that quarantines gets the bad line
as a :class:`BadLine` and decides itself.

:func:`write_json_lines` writes a whole file atomically (a temporary file, flushed to disk, then
renamed over the target): a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
NOT_OBJECT = "not_object"

# A JSON escape in the surrogate range (\ud800-\udfff); a paired one decodes to a proper character,
# so a match only means the decoded object needs checking.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class BadLine:
    """A malformed line: its reason, a human detail, and its text (undecodable bytes as ``\\x..``)."""

    reason: str
    detail: str
    text: str


def iter_json_lines(path: str | Path, error_cls: type[Exception] | None = None
                    ) -> Iterator[tuple[int, dict[str, Any] | BadLine]]:
    """(line number, object) for each non-blank line of ``path``, numbered from 1.

    A malformed line raises ``error_cls(f"{path}:{n}: {detail}")`` when ``error_cls`` is given;
    without it the line is yielded as ``(n, BadLine(...))``.
    """
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            bad = None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                bad = BadLine(INVALID_UTF8, f"not valid UTF-8 ({err.reason} at byte {err.start})",
                              raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
            else:
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except (ValueError, RecursionError) as err:  # RecursionError: nesting deeper than the decoder's stack
                    bad = BadLine(INVALID_JSON, f"not valid JSON ({err or type(err).__name__})", text.rstrip("\r\n"))
                else:
                    if not isinstance(obj, dict):
                        bad = BadLine(NOT_OBJECT, f"not a JSON object (a {type(obj).__name__})", text.rstrip("\r\n"))
                    elif _SURROGATE_ESCAPE.search(raw) and not _encodable(obj):
                        bad = BadLine(INVALID_UTF8, "a string holds a lone UTF-16 surrogate escape, not valid UTF-8",
                                      text.rstrip("\r\n"))
            if bad is None:
                yield n, obj
            elif error_cls is not None:
                raise error_cls(f"{path}:{n}: {bad.detail}")
            else:
                yield n, bad


def _encodable(obj: Any) -> bool:
    """Whether every string (keys included) of a decoded JSON value encodes as UTF-8."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_json_lines(path: str | Path, rows: list[dict]) -> None:
    """Write `rows` as JSON lines (UTF-8, non-ASCII kept), atomically; the parent directory is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
