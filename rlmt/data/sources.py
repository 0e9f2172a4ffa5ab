"""Reading raw prompt sources into one canonical shape, without losing a single row.

Every source format (Tülu-3 preference, the reference RL parquet, UltraFeedback, chat JSONL,
instruction JSONL) becomes batches of the same frame:

``source`` (label), ``source_row`` (0-based row of that source), ``messages`` (list of
{role, content}, or null) and ``error`` (null, or why the row's structure could not be read).

Rows are never skipped here: a row that cannot be read keeps its place with an ``error`` so that
curation can quarantine it and the stats reconcile (in = kept + dropped). Parquet sources with the
expected column types are converted with polars expressions, batch by batch, so a million-row
file never sits in memory with its (long) chosen/rejected responses; anything else (JSONL, odd
column types) goes through a per-record reader that checks every type.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)
CANONICAL = {"source": pl.String, "source_row": pl.Int64, "messages": MESSAGES, "error": pl.String}
FORMATS = ("tulu-preference", "rl-parquet", "ultrafeedback", "chat-jsonl", "instruction-jsonl")
BATCH_ROWS = 65_536

# Read-stage reasons (curation adds the filter reasons after these).
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
NON_STRING_CONTENT = "non_string_content"


class SourceError(ValueError):
    """A source that cannot be read at all (missing file, unknown format): names the problem."""


@dataclass(frozen=True)
class ResolvedSource:
    """A source after path expansion: where to read, in which format, under which label."""

    location: str  # a local path, or "hf:<id>[:<split>]"
    format: str
    name: str
    weight: float

    @property
    def is_hub(self) -> bool:
        return self.location.startswith("hf:")


def resolve_source(path: str, fmt: str, name: str | None, weight: float, data_dir: Path | None) -> ResolvedSource:
    """Expand ``package:``/``{data_dir}`` paths, check the file exists and settle 'auto' formats."""
    if path.startswith("package:"):
        resource = path[len("package:"):]
        location = str(resources.files("rlmt.resources") / f"{resource}.jsonl")
        if not Path(location).is_file():
            raise SourceError(f"source {path!r}: no shipped resource named {resource!r}")
    elif path.startswith("hf:"):
        location = path
    else:
        if "{data_dir}" in path:
            if data_dir is None:
                raise SourceError(f"source {path!r} uses {{data_dir}} but no data directory is set "
                                  "(config data_dir or $RLMT_DATA_DIR)")
            path = path.replace("{data_dir}", str(data_dir))
        location = path
        if not Path(location).is_file():
            raise SourceError(f"source file not found: {location}")
    label = name or _default_name(path)
    if fmt == "auto":
        fmt = _sniff_format(location)
    if fmt not in FORMATS:
        raise SourceError(f"source {path!r}: unknown format {fmt!r}; allowed: {list(FORMATS)}")
    return ResolvedSource(location=location, format=fmt, name=label, weight=weight)


def _default_name(path: str) -> str:
    if path.startswith(("package:", "hf:")):
        return path.split(":", 1)[1].split(":")[0].rsplit("/", 1)[-1]
    p = Path(path)
    return p.parent.name if p.stem in ("train", "test", "data") else p.stem


def _sniff_format(location: str) -> str:
    """Guess a format from the columns (parquet) or the first readable record (JSONL)."""
    if location.startswith("hf:"):
        raise SourceError(f"source {location!r}: give an explicit format for Hugging Face sources")
    if _is_parquet(location):
        columns = set(pl.read_parquet_schema(location))
        record: dict[str, Any] = {c: None for c in columns}
        schema = pl.read_parquet_schema(location)
        prompt_is_list = isinstance(schema.get("prompt"), pl.List)
    else:
        record, prompt_is_list = {}, False
        with open(location, "rb") as fh:
            for line in fh:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    record, prompt_is_list = obj, isinstance(obj.get("prompt"), list)
                    break
    if "messages" in record and "chosen" not in record:
        return "chat-jsonl"
    if "chosen" in record:
        return "tulu-preference"
    if "prompt" in record and prompt_is_list:
        return "rl-parquet"
    if "instruction" in record or "prompt" in record:
        return "instruction-jsonl"
    raise SourceError(f"source {location}: cannot tell its format from its fields {sorted(record)}; set 'format'")


def _is_parquet(location: str) -> bool:
    return location.endswith(".parquet")


# ---------------------------------------------------------------------- reading


def read_source(src: ResolvedSource, batch_rows: int = BATCH_ROWS, rows: np.ndarray | None = None
                ) -> Iterator[pl.DataFrame]:
    """Yield canonical batches (``CANONICAL`` columns) covering every row of the source in order.

    With `rows` (0-based row numbers, any order), only those rows come back, in order: curation
    reads a source once in full and then again for the few rows it keeps, instead of holding every
    conversation in memory.
    """
    wanted = None if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
    if wanted is not None and len(wanted) == 0:
        return
    if src.is_hub:
        yield from _read_arrow(src, _hub_batches(src, batch_rows), wanted)
    elif _is_parquet(src.location):
        yield from _read_arrow(src, _parquet_batches(src, batch_rows), wanted)
    else:
        yield from _read_jsonl(src, batch_rows, wanted)


def count_rows(src: ResolvedSource) -> int | None:
    """Rows in a parquet source, from its footer (None for JSONL and hub sources: unknown until read)."""
    if src.is_hub or not _is_parquet(src.location):
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(src.location).metadata.num_rows


def _parquet_batches(src: ResolvedSource, batch_rows: int, all_columns: bool = False) -> Iterator[Any]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(src.location)
    available = set(pf.schema_arrow.names)
    wanted = None if all_columns else [c for c in _fields_of(src.format) if c in available]
    # One reader per row group: a single iter_batches over the whole file keeps the decoded pages
    # of every row group it has passed (pyarrow 25), which on a million rows is gigabytes.
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=wanted or None)


def _hub_batches(src: ResolvedSource, batch_rows: int, all_columns: bool = False) -> Iterator[Any]:
    """A Hugging Face dataset (networked machines; downloaded once into the datasets cache)."""
    from datasets import load_dataset

    dataset_id, _, split = src.location[len("hf:"):].partition(":")
    ds = load_dataset(dataset_id, split=split or "train")
    if not all_columns:
        ds = ds.select_columns([c for c in _fields_of(src.format) if c in ds.column_names])
    yield from ds.data.table.to_batches(max_chunksize=batch_rows)


def _read_arrow(src: ResolvedSource, batches: Iterator[Any], wanted: np.ndarray | None) -> Iterator[pl.DataFrame]:
    """Canonical frames from arrow record batches, all rows or only the `wanted` ones.

    Rows holding a string that is not valid UTF-8 become ``invalid_utf8`` rows without messages:
    polars takes arrow's string bytes as they are, and such bytes fail (or panic) later.
    """
    for numbers, batch in _pick(batches, wanted):
        bad = invalid_utf8_rows(batch)
        good = np.setdiff1d(np.arange(batch.num_rows), bad) if len(bad) else None
        frame = pl.from_arrow(batch if good is None else batch.take(good))
        assert isinstance(frame, pl.DataFrame)
        out = _canonical_frame(frame, src, numbers if good is None else numbers[good])
        if good is not None:
            broken = pl.DataFrame({"source": [src.name] * len(bad), "source_row": numbers[bad],
                                   "messages": [None] * len(bad), "error": [INVALID_UTF8] * len(bad)}, schema=CANONICAL)
            out = pl.concat([out, broken]).sort("source_row")
        yield out


def invalid_utf8_rows(batch: Any) -> np.ndarray:
    """Positions of the rows of an arrow record batch that hold a string which is not valid UTF-8.

    Parquet readers do not check string bytes; one full validation per batch does, and only a batch
    that fails it is bisected (on compacted ``take`` copies: a slice would still validate the
    whole child arrays of nested columns) down to its bad rows.
    """
    import pyarrow as pa

    def valid(part: Any) -> bool:
        try:
            part.validate(full=True)
        except pa.ArrowInvalid as err:
            if "UTF8" not in str(err):
                raise
            return False
        return True

    if valid(batch):
        return np.zeros(0, dtype=np.int64)
    bad: list[int] = []
    spans = [(0, batch.num_rows)]
    while spans:
        lo, hi = spans.pop()
        if valid(batch.take(pa.array(np.arange(lo, hi)))):
            continue
        if hi - lo == 1:
            bad.append(lo)
        else:
            mid = (lo + hi) // 2
            spans += [(lo, mid), (mid, hi)]
    return np.array(sorted(bad), dtype=np.int64)


def _pick(batches: Iterator[Any], wanted: np.ndarray | None) -> Iterator[tuple[np.ndarray, Any]]:
    """(row numbers, record batch) for each arrow batch holding rows: all of its rows, or only the
    `wanted` ones (sorted, unique). Decoded pages are handed back after each batch."""
    offset = 0
    for batch in batches:
        n = batch.num_rows
        if wanted is None:
            numbers = np.arange(offset, offset + n, dtype=np.int64)
        else:
            lo, hi = np.searchsorted(wanted, [offset, offset + n])
            numbers = wanted[lo:hi]
            batch = batch.take(numbers - offset)
        if len(numbers):
            yield numbers, batch
        offset += n
        del batch
        _release_arrow_memory()


def _read_jsonl(src: ResolvedSource, batch_rows: int, wanted: np.ndarray | None) -> Iterator[pl.DataFrame]:
    keep = None if wanted is None else set(wanted.tolist())
    rows: list[dict[str, Any]] = []
    with open(src.location, "rb") as fh:
        for i, line in enumerate(_lines(fh)):
            if keep is not None and i not in keep:
                continue
            messages, error = _record_from_line(line, src.format)
            rows.append({"source": src.name, "source_row": i, "messages": messages, "error": error})
            if len(rows) >= batch_rows:
                yield pl.DataFrame(rows, schema=CANONICAL)
                rows = []
    if rows or (keep is None and not _has_rows(src.location)):
        yield pl.DataFrame(rows, schema=CANONICAL)


def _lines(fh) -> Iterator[bytes]:
    """Non-blank lines of a JSONL file (a blank line is layout, not a row)."""
    for line in fh:
        if line.strip():
            yield line


def _has_rows(location: str) -> bool:
    with open(location, "rb") as fh:
        return any(True for _ in _lines(fh))


def raw_rows(src: ResolvedSource, rows: list[int]) -> Iterator[dict[int, str]]:
    """The original rows at these indices, serialized as JSON text (for quarantine.parquet).

    Read again from the source rather than kept in memory during curation: only dropped rows are
    ever asked for, and they come back a source batch at a time (row -> text, in row order), so
    the caller can write them out without holding them all. Lines (or parquet strings) that are not
    valid UTF-8 come back with the bad bytes escaped.
    """
    wanted = set(rows)
    if not wanted:
        return
    if src.is_hub or _is_parquet(src.location):
        # Batch by batch, so a large file is never decoded whole just to pick a few rows.
        batches = (_hub_batches if src.is_hub else _parquet_batches)(src, BATCH_ROWS, all_columns=True)
        for numbers, batch in _pick(batches, np.array(sorted(wanted), dtype=np.int64)):
            bad = invalid_utf8_rows(batch)
            good = np.setdiff1d(np.arange(batch.num_rows), bad)
            picked = pl.from_arrow(batch.take(good) if len(bad) else batch)
            assert isinstance(picked, pl.DataFrame)
            raw = picked.select(pl.struct(pl.all()).struct.json_encode())
            chunk = dict(zip(numbers[good].tolist(), raw.to_series().to_list(), strict=True))
            chunk.update((int(numbers[i]), _escaped_json(batch.take([int(i)]))) for i in bad)
            yield chunk
        return
    chunk: dict[int, str] = {}
    with open(src.location, "rb") as fh:
        for i, line in enumerate(_lines(fh)):
            if i in wanted:
                chunk[i] = line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
                if len(chunk) >= BATCH_ROWS:
                    yield chunk
                    chunk = {}
    if chunk:
        yield chunk


def _escaped_json(row: Any) -> str:
    """One arrow row holding invalid UTF-8 as JSON text, its string bytes decoded with the bad bytes
    escaped (``\\xff``), as JSONL lines are."""
    table = row.cast(_binary_schema(row.schema))
    record = table.to_pylist()[0]

    def text(value: Any) -> str:
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="backslashreplace")
        return str(value)

    return json.dumps(record, ensure_ascii=False, default=text)


def _binary_schema(schema: Any) -> Any:
    """`schema` with every (nested) string type replaced by binary, so invalid bytes can be read."""
    import pyarrow as pa

    def swap(t: Any) -> Any:
        if pa.types.is_string(t):
            return pa.binary()
        if pa.types.is_large_string(t):
            return pa.large_binary()
        if pa.types.is_list(t):
            return pa.list_(swap(t.value_type))
        if pa.types.is_large_list(t):
            return pa.large_list(swap(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, swap(f.type), f.nullable) for f in t])
        return t

    return pa.schema([pa.field(f.name, swap(f.type), f.nullable) for f in schema])


def _release_arrow_memory() -> None:
    """Hand decoded parquet pages back to the OS: arrow's allocator keeps them otherwise, and on a
    million-row preference file (long chosen/rejected answers) that is gigabytes of peak RSS."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


# ---------------------------------------------------------------------- format fields


def _fields_of(fmt: str) -> list[str]:
    """The columns a format needs (everything else, like long responses, is never read)."""
    return {
        "tulu-preference": ["chosen", "prompt", "messages"],
        "rl-parquet": ["prompt"],
        "ultrafeedback": ["prompt", "instruction", "messages", "chosen"],
        "chat-jsonl": ["messages"],
        "instruction-jsonl": ["instruction", "prompt", "input"],
    }[fmt]


def _canonical_frame(frame: pl.DataFrame, src: ResolvedSource, source_rows: np.ndarray) -> pl.DataFrame:
    """Vectorized conversion when the columns have the expected types; per-record otherwise."""
    head = pl.DataFrame({"source": pl.repeat(src.name, frame.height, dtype=pl.String, eager=True),
                         "source_row": pl.Series(source_rows, dtype=pl.Int64)})
    expr = _vectorized_messages(frame, src.format)
    if expr is None:
        records = frame.to_dicts()
        parsed = [_record_messages(r, src.format) for r in records]
        body = pl.DataFrame({"messages": [m for m, _ in parsed], "error": [e for _, e in parsed]},
                            schema={"messages": MESSAGES, "error": pl.String})
        return pl.concat([head, body], how="horizontal")
    messages, error = expr
    body = frame.select(messages.alias("messages"), error.alias("error"))
    return pl.concat([head, body], how="horizontal").cast(CANONICAL)  # type: ignore[arg-type]


def _is_message_list(dtype: pl.DataType | None) -> bool:
    if not isinstance(dtype, pl.List) or not isinstance(dtype.inner, pl.Struct):
        return False
    fields = {f.name: f.dtype for f in dtype.inner.fields}
    return fields.get("role") == pl.String and fields.get("content") == pl.String


def _vectorized_messages(frame: pl.DataFrame, fmt: str) -> tuple[pl.Expr, pl.Expr] | None:
    """(messages, error) expressions for well-typed columns; None to fall back to per-record."""
    schema = frame.schema
    list_col = {"tulu-preference": "chosen", "rl-parquet": "prompt", "chat-jsonl": "messages"}.get(fmt)
    if fmt == "ultrafeedback":
        list_col = "messages" if "messages" in schema else ("chosen" if "chosen" in schema else None)
        if "prompt" in schema or "instruction" in schema:
            list_col = None
    if list_col is not None:
        if list_col not in schema:
            if fmt == "tulu-preference" and schema.get("prompt") == pl.String:
                return _string_prompt(pl.col("prompt"))
            return None
        if not _is_message_list(schema[list_col]):
            return None
        col = pl.col(list_col)
        missing = col.is_null()
        if fmt == "tulu-preference" and schema.get("prompt") == pl.String:
            # No chosen conversation: the prompt string alone is the (single) user turn.
            fallback = pl.concat_list(pl.struct(role=pl.lit("user"), content=pl.col("prompt")))
            return (pl.when(missing & pl.col("prompt").is_not_null()).then(fallback).otherwise(col),
                    pl.when(missing & pl.col("prompt").is_null()).then(pl.lit(MISSING_FIELD)))
        return col, pl.when(missing).then(pl.lit(MISSING_FIELD))
    for name in ("instruction", "prompt"):
        if name in schema:
            if schema[name] != pl.String:
                return None
            text = pl.col(name)
            if "input" in schema and schema["input"] == pl.String:
                text = pl.when(pl.col("input").is_not_null() & (pl.col("input").str.strip_chars() != "")) \
                    .then(text + pl.lit("\n\n") + pl.col("input")).otherwise(text)
            return _string_prompt(text)
    return None


def _string_prompt(text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    messages = pl.when(text.is_not_null()).then(pl.concat_list(pl.struct(role=pl.lit("user"), content=text)))
    return messages, pl.when(text.is_null()).then(pl.lit(MISSING_FIELD))


# ---------------------------------------------------------------------- per-record path


def _record_from_line(line: bytes, fmt: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """One JSONL line -> (messages, None) or (None, reason).

    A line is UTF-8, but a JSON escape can still spell a lone UTF-16 surrogate (``"\\ud800"``):
    ``json.loads`` gives a Python string that no UTF-8 writer (polars, the tokenizer, Parquet)
    accepts, so a conversation holding one is ``invalid_utf8`` too.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None, INVALID_UTF8
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the decoder's stack
        return None, INVALID_JSON
    messages, error = _record_messages(record, fmt)
    if messages is not None and _SURROGATE_ESCAPE.search(line) and not _encodable(messages):
        return None, INVALID_UTF8
    return messages, error


# A JSON escape in the surrogate range (\ud800-\udfff); a paired one decodes to a proper character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _encodable(messages: list[dict[str, str]]) -> bool:
    try:
        for m in messages:
            for value in (m["role"], m["content"]):
                if value is not None:
                    value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _record_messages(record: Any, fmt: str) -> tuple[list[dict[str, str]] | None, str | None]:
    """One decoded record -> (messages, None) or (None, reason); checks every type."""
    if not isinstance(record, dict):
        return None, WRONG_TYPE
    if fmt in ("tulu-preference", "rl-parquet", "chat-jsonl", "ultrafeedback"):
        key = {"tulu-preference": "chosen", "rl-parquet": "prompt", "chat-jsonl": "messages"}.get(fmt)
        if fmt == "ultrafeedback":
            key = next((k for k in ("messages", "chosen") if k in record and "prompt" not in record), None)
        if key is not None and record.get(key) is not None:
            return _message_list(record[key])
        if fmt == "tulu-preference" and isinstance(record.get("messages"), list):
            return _message_list(record["messages"])
        if fmt in ("tulu-preference", "ultrafeedback"):
            return _string_record(record)
        return None, MISSING_FIELD
    return _string_record(record)


def _string_record(record: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str | None]:
    for name in ("instruction", "prompt"):
        if name in record and record[name] is not None:
            value = record[name]
            if not isinstance(value, str):
                return None, WRONG_TYPE
            extra = record.get("input")
            if isinstance(extra, str) and extra.strip():
                value = f"{value}\n\n{extra}"
            return [{"role": "user", "content": value}], None
    return None, MISSING_FIELD


def _message_list(value: Any) -> tuple[list[dict[str, str]] | None, str | None]:
    """Type checks only; role validity, emptiness etc. are filters counted later."""
    if not isinstance(value, list):
        return None, WRONG_TYPE
    out = []
    for m in value:
        if not isinstance(m, dict):
            return None, WRONG_TYPE
        role, content = m.get("role"), m.get("content")
        if role is not None and not isinstance(role, str):
            return None, WRONG_TYPE
        if content is not None and not isinstance(content, str):
            return None, NON_STRING_CONTENT
        out.append({"role": role, "content": content})
    return out, None
