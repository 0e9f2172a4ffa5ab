"""``generations.jsonl``: generating a whole prompt file, resumably.

Rows are appended as soon as a chunk of prompts is done and the file is fsync'd, so a job killed
after an hour loses at most one chunk. A rerun reads the file, skips every id already there and
generates only the rest; a last line cut off by a crash is dropped and its id generated again. A
sidecar ``<out>.meta.json`` records the sampling settings and the thinking format, and a rerun
with different ones stops with an error instead of mixing two settings in one file.

Each row (one per prompt and sample)::

    id, sample, prompt (messages), output (raw text), answer, thought, answer_found, well_formed,
    issues, finish_reason, n_tokens

``answer``/``thought``/``answer_found``/``well_formed``/``issues`` come from
:func:`rlmt.thinking.extract` (non-strict): an output whose thought never ended has
``answer_found: false`` and an empty answer, and every benchmark counts it as failed.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rlmt.generation.base import Completion, GenerationError, Generator, Messages, SamplingParams, check_messages
from rlmt.thinking import WARM_NOTHINK, ThinkingFormat, extract

ROW_FIELDS = ("id", "sample", "prompt", "output", "answer", "thought", "answer_found", "well_formed", "issues",
              "finish_reason", "n_tokens")


class PromptFileError(ValueError):
    """A prompt file that cannot be generated from, with every problem found (line numbers)."""


# ---------------------------------------------------------------------- prompt files


def read_prompts(path: str | Path) -> list[tuple[str, Messages]]:
    """(id, messages) items of a JSONL or parquet file with ``id`` and ``messages`` columns.

    Every malformed row is reported (the count and the first ten, with line numbers) in one
    :class:`PromptFileError`; none is skipped silently, because a benchmark with a dropped item
    reports a wrong denominator.
    """
    path = Path(path)
    if not path.exists():
        raise PromptFileError(f"prompt file not found: {path}")
    if path.suffix == ".parquet":
        import polars as pl

        raw_rows: Iterable[tuple[int, Any]] = enumerate(pl.read_parquet(path).to_dicts(), start=1)
    elif path.suffix in (".jsonl", ".json"):
        raw_rows = _jsonl_rows(path)
    else:
        raise PromptFileError(f"{path}: unknown prompt file type {path.suffix!r}; allowed: .jsonl, .parquet")
    items: list[tuple[str, Messages]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for line, row in raw_rows:
        where = f"{path.name}:{line}"
        if isinstance(row, Exception):
            problems.append(f"{where}: not valid JSON ({row})")
            continue
        if not isinstance(row, dict) or "id" not in row or "messages" not in row:
            problems.append(f"{where}: a row needs 'id' and 'messages'")
            continue
        rid = row["id"]
        if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
            problems.append(f"{where}: id must be a non-empty string or integer, got {rid!r}")
            continue
        rid = str(rid)
        if rid in seen:
            problems.append(f"{where}: duplicate id {rid!r}")
            continue
        try:
            messages = check_messages(row["messages"], where)
        except GenerationError as err:
            problems.append(str(err))
            continue
        seen.add(rid)
        items.append((rid, [{"role": m["role"], "content": m["content"]} for m in messages]))
    if problems:
        shown = "\n  ".join(problems[:10])
        raise PromptFileError(f"{path}: {len(problems)} malformed row(s):\n  {shown}")
    if not items:
        raise PromptFileError(f"{path}: no prompts")
    return items


def _jsonl_rows(path: Path) -> Iterable[tuple[int, Any]]:
    with path.open() as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                yield line_no, err


# ---------------------------------------------------------------------- generations file


def generate_file(model_dir: str | Path, items: list[tuple[str, Messages]], out_jsonl: str | Path,
                  params: SamplingParams | None = None, *, backend: str = "auto", fmt: ThinkingFormat | None = None,
                  generator: Generator | None = None, sampling=None, chunk_size: int | None = None,
                  progress: bool = True, **generator_options: Any) -> Path:
    """Generate every item's completions into `out_jsonl`; only ids missing from it are generated.

    `model_dir` is the policy directory (its ``longcot_config.json`` gives the format and stop
    strings) or, for ``backend="openai"``, the endpoint's model name; then the format is `fmt`
    (default: no thinking). `params` default to :meth:`SamplingParams.for_format` with `sampling`
    (a ``rlmt.config.SamplingConfig``). A ready `generator` may be passed to reuse a loaded model;
    otherwise one is built with :func:`make_generator` from `backend` and `generator_options`
    and closed at the end. An HTTP backend caches beside the output (``<out>.cache.sqlite``).
    """
    from rlmt.generation.backends import make_generator, resolve_backend

    _check_items(items)
    out = Path(out_jsonl)
    is_http = (generator.backend == "openai") if generator is not None else \
        resolve_backend(backend, device=generator_options.get("device", "auto"),
                        base_url=generator_options.get("base_url")) == "openai"
    if fmt is None:
        fmt = WARM_NOTHINK if is_http else ThinkingFormat.load(model_dir)
    params = (params or SamplingParams.for_format(fmt, sampling)).with_stops(fmt.stop_strings)

    out.parent.mkdir(parents=True, exist_ok=True)
    _check_meta(out, params, fmt)
    done = load_done_ids(out, params.n)
    missing = [(rid, msgs) for rid, msgs in items if rid not in done]
    if not missing:
        return out

    own = generator is None
    if own:
        if is_http:
            generator_options.setdefault("cache_path", out.with_name(out.name + ".cache.sqlite"))
        generator_options.setdefault("progress", progress)
        generator = make_generator(backend, model_dir, **generator_options)
    assert generator is not None
    step = chunk_size or generator.chunk_size
    try:
        generator.prepare([msgs for _, msgs in missing], params)
        with out.open("a") as fh, tqdm(total=len(missing), desc=f"generate {out.parent.name or out.name}",
                                       unit="prompt", disable=not progress) as bar:
            for start in range(0, len(missing), step):
                chunk = missing[start:start + step]
                completions = generator.generate([msgs for _, msgs in chunk], params)
                if len(completions) != len(chunk):
                    raise GenerationError(f"backend returned {len(completions)} results for {len(chunk)} prompts")
                lines = []
                for (rid, msgs), outs in zip(chunk, completions):
                    if len(outs) != params.n:
                        raise GenerationError(f"backend returned {len(outs)} samples for id {rid!r}, expected {params.n}")
                    lines.extend(json.dumps(make_row(rid, k, msgs, c, fmt), ensure_ascii=False) for k, c in enumerate(outs))
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(chunk))
    finally:
        if own:
            generator.close()
    return out


def make_row(rid: str, sample: int, prompt: Messages, completion: Completion, fmt: ThinkingFormat) -> dict:
    """One generations.jsonl row; thought and answer split by the project's one extraction rule."""
    ex = extract(completion.text, fmt)
    return {"id": rid, "sample": sample, "prompt": prompt, "output": completion.text, "answer": ex.answer,
            "thought": ex.thought, "answer_found": ex.answer_found, "well_formed": ex.well_formed,
            "issues": list(ex.issues), "finish_reason": completion.finish_reason, "n_tokens": completion.n_tokens}


def read_generations(path: str | Path) -> list[dict]:
    """The rows of a finished generations file (a truncated last line is an error here)."""
    rows = []
    with Path(path).open() as f:
        for line_no, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise GenerationError(f"{path}:{line_no}: not valid JSON ({err}); rerun generation to repair it") from None
    return rows


def generation_stats(rows: list[dict]) -> dict[str, float]:
    """Counts worth logging: rows, truncated, answers missing or malformed, mean tokens."""
    n = len(rows)
    return {
        "n_rows": n,
        "n_length": sum(r["finish_reason"] == "length" for r in rows),
        "n_answer_missing": sum(not r["answer_found"] for r in rows),
        "n_malformed": sum(not r["well_formed"] for r in rows),
        "mean_n_tokens": (sum(r["n_tokens"] for r in rows) / n) if n else 0.0,
    }


def load_done_ids(out: Path, n: int) -> set[str]:
    """Ids with all `n` samples in `out`; repairs a crash's leftovers in place.

    A last line without its newline (the write was cut off) is removed. Ids with fewer than `n`
    samples (possible only when a chunk's write was cut between its lines) are removed too and
    generated again. A broken line *before* the last one is corruption, not a crash: it stops with
    an error naming the line.
    """
    if not out.exists():
        return set()
    pieces = out.read_bytes().decode("utf-8", errors="replace").split("\n")
    cut_off = bool(pieces.pop().strip())  # text after the last newline: a write the crash cut short
    rows: list[dict] = []
    for line_no, line in enumerate(pieces, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise GenerationError(f"{out}:{line_no}: not valid JSON; the file is corrupt (not a cut-off last "
                                  "line). Delete it to generate again.") from None
        if not isinstance(row, dict) or "id" not in row:
            raise GenerationError(f"{out}:{line_no}: a row without 'id'; the file is corrupt")
        rows.append(row)
    counts = Counter(str(r["id"]) for r in rows)
    complete = {rid for rid, c in counts.items() if c >= n}
    incomplete = set(counts) - complete
    if incomplete or cut_off:
        kept = [r for r in rows if str(r["id"]) in complete]
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
        os.replace(tmp, out)
    return complete


def _check_items(items: list[tuple[str, Messages]]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise GenerationError(f"items[{i}] must be an (id, messages) pair")
        rid, messages = item
        if not isinstance(rid, str) or not rid:
            raise GenerationError(f"items[{i}]: id must be a non-empty string, got {rid!r}")
        if rid in seen:
            raise GenerationError(f"items[{i}]: duplicate id {rid!r}")
        seen.add(rid)
        check_messages(messages, f"items[{i}] (id {rid!r})")


def _check_meta(out: Path, params: SamplingParams, fmt: ThinkingFormat) -> None:
    """Refuse to append to a file made with other sampling settings or another format."""
    meta_path = out.with_name(out.name + ".meta.json")
    meta = {"params": params.to_dict(), "format": fmt.to_dict()}
    if meta_path.exists() and out.exists() and out.stat().st_size > 0:
        old = json.loads(meta_path.read_text())
        if old != meta:
            raise GenerationError(f"{out} was generated with other settings ({meta_path}: {old}); now {meta}. "
                                  "Delete it or write to another file.")
        return
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
