"""Warm-start SFT data (PAPER.md §2.5): teacher answers with a planning phase → a think and a nothink set.

Two sources, one output format:

- **teacher** (``sft_data.<name>.teacher``): each prompt goes to an OpenAI-compatible endpoint with
  the paper's planning instruction appended to the user turn; the answer must look like
  ``<think>…</think><response>…</response>``. A prompt whose answer fails the format filters is
  asked again, up to ``max_tries`` (the reference: 2) tries in all.
- **path** (``sft_data.<name>.path``): a JSONL of teacher outputs already split, rows
  ``{id, messages | prompt, thought, response}``; ``package:demo_sft`` is the shipped demo set.

The reference code's filters, each counted in the stats JSON (and every dropped row written to a
quarantine JSONL with its reason, never dropped silently):

- ``invalid_utf8`` / ``invalid_json`` / ``not_object`` (a ``path`` file's line that is not UTF-8 —
  a lone surrogate escape such as ``"\\ud800"`` included —, not JSON, or not a JSON object; see
  :mod:`rlmt.jsonl`) and ``malformed_row`` (a row without usable messages, thought and response);
- ``duplicate_id``: de-duplication by id (first kept);
- ``multi_turn``: single-turn only (exactly one user turn, nothing else);
- ``non_english``: ``langdetect`` on the prompt (seeded, so the decision is reproducible);
- ``teacher_error``: the endpoint failed for good (retries exhausted);
- output filters: ``no_start_think`` (must start with ``<think>``), ``no_response_tag`` (must
  contain ``<response>``), ``multiple_think`` (exactly one ``<think>``), ``stray_tags`` (no
  think/response tag inside the thought or the response), ``empty_thought`` / ``empty_response``.

Outputs (warm-start format, built with :func:`rlmt.thinking.sft_messages`): the think set's
assistant turn is ``<think>\\n{thought}\\n</think>\\n\\n{response}``, the nothink set's is the
response alone — the same examples, in the same order.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rlmt.config import SFTDataSpec, SourceSpec
from rlmt.jsonl import BadLine, iter_json_lines, write_json_lines
from rlmt.thinking import WARM_NOTHINK, WARM_THINK, sft_messages

# PAPER.md §2.2, appended verbatim (after a blank line) to each user prompt.
PLANNING_INSTRUCTION = (
    "FORMAT: First showcase a detailed planning phase where you plan your response within <think>...</think> tags. "
    "Then produce the actual response within <response>...</response> tags. The content within the "
    "<think>...</think> tags should *not* refer to the fact that a planning phase was prompted - they should refer "
    "to the user prompt only."
)
TAGS = ("<think>", "</think>", "<response>", "</response>")
_THINK_RE = re.compile(r"^<think>(?P<thought>.*?)(?:</think>\s*)?<response>(?P<response>.*?)(?:</response>(?P<after>.*))?$",
                       re.S)


class SFTDataError(ValueError):
    """SFT data settings or inputs that cannot be used."""


@dataclass
class SFTDataResult:
    think_path: Path
    nothink_path: Path
    stats: dict


# ---------------------------------------------------------------------- parsing and filters


def parse_teacher_output(text: str) -> tuple[str, str] | str:
    """(thought, response) of a well-formed teacher answer, or the name of the filter it fails."""
    text = text.strip()
    if not text.startswith("<think>"):
        return "no_start_think"
    if "<response>" not in text:
        return "no_response_tag"
    if text.count("<think>") != 1:
        return "multiple_think"
    m = _THINK_RE.match(text)
    if not m:
        return "stray_tags"
    thought, response = m.group("thought").strip(), m.group("response").strip()
    if any(t in thought or t in response for t in TAGS) or (m.group("after") or "").strip():
        return "stray_tags"
    if not thought:
        return "empty_thought"
    if not response:
        return "empty_response"
    return thought, response


def _is_english(text: str) -> bool:
    from langdetect import DetectorFactory, LangDetectException, detect

    DetectorFactory.seed = 0
    try:
        return detect(text) == "en"
    except LangDetectException:  # no letters at all: nothing to call English
        return False


def _prompt_filter(messages: list[dict], english_only: bool) -> str | None:
    if len(messages) != 1 or messages[0].get("role") != "user":
        return "multi_turn"
    if english_only and not _is_english(messages[0]["content"]):
        return "non_english"
    return None


# ---------------------------------------------------------------------- reading inputs


def resolve_path(path: str, data_dir: Path | None = None) -> Path:
    """'package:NAME' -> rlmt/resources/NAME.jsonl; '{data_dir}' expands; 'hf:' needs a networked curation step."""
    if path.startswith("package:"):
        from importlib import resources

        return Path(str(resources.files("rlmt.resources").joinpath(path.split(":", 1)[1] + ".jsonl")))
    if path.startswith("hf:"):
        raise SFTDataError(f"{path}: hub datasets are not read here; materialize the prompts to a local "
                           "JSONL/parquet first (this stage never downloads)")
    if "{data_dir}" in path:
        if data_dir is None:
            raise SFTDataError(f"{path}: uses {{data_dir}} but neither $RLMT_DATA_DIR nor data_dir is set")
        path = path.replace("{data_dir}", str(data_dir))
    return Path(path)


def _read_rows(path: Path) -> list[tuple[int, dict | BadLine]]:
    """(line or row number, row) of a parquet or JSONL file; a JSONL line that is not a UTF-8 JSON object
    comes as a :class:`rlmt.jsonl.BadLine` with its reason."""
    if not path.is_file():
        raise SFTDataError(f"file not found: {path}")
    if path.suffix == ".parquet":
        import polars as pl

        return list(enumerate(pl.read_parquet(path).to_dicts(), 1))
    return list(iter_json_lines(path))


def _messages_of(row: dict) -> list[dict] | None:
    msgs = row.get("messages", row.get("prompt"))
    if isinstance(msgs, str):
        return [{"role": "user", "content": msgs}]
    if isinstance(msgs, list) and all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str)
                                      for m in msgs) and msgs:
        # a source row may hold the reference answer too: the prompt is everything before it
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return [{"role": m["role"], "content": m["content"]} for m in msgs] or None
    return None


def _row_id(row: dict, messages: list[dict]) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    return hashlib.sha1(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def load_prompts(sources: list[SourceSpec], data_dir: Path | None, quarantine: list[dict]) -> list[dict]:
    """Prompt rows ``{id, messages, source}`` read by the curation stage's source readers (every format
    it knows); a row it cannot read is quarantined with its reason. The id is a hash of the prompt, so
    de-duplication by id also removes the same prompt listed twice."""
    from rlmt.data.sources import read_source, resolve_source

    out = []
    for spec in sources:
        src = resolve_source(spec.path, spec.format, spec.name, spec.weight, data_dir)
        for frame in read_source(src):
            for row in frame.to_dicts():
                msgs = _messages_of(row) if row.get("error") is None else None
                if msgs is None:
                    quarantine.append({"row": row, "reason": "malformed_row", "detail": row.get("error")})
                    continue
                out.append({"id": _row_id({}, msgs), "messages": msgs, "source": row["source"]})
    return out


# ---------------------------------------------------------------------- the stage


def build_sft_data(spec: SFTDataSpec, out_think: str | Path, out_nothink: str | Path, *,
                   stats_path: str | Path | None = None, cache_path: str | Path | None = None,
                   data_dir: Path | None = None, english_only: bool = True) -> SFTDataResult:
    """Build the think and nothink SFT sets of one ``sft_data`` entry; returns paths and stats."""
    out_think, out_nothink = Path(out_think), Path(out_nothink)
    stats_path = Path(stats_path) if stats_path else out_think.with_name(out_think.stem + ".stats.json")
    counts: Counter[str] = Counter()
    quarantine: list[dict] = []

    if spec.path is not None:
        candidates = _rows_from_file(spec.path, data_dir, quarantine)
    else:
        candidates = load_prompts(spec.prompts, data_dir, quarantine)
        if not spec.prompts:
            raise SFTDataError("sft_data: a teacher needs 'prompts' (a list of prompt sources)")
    counts["rows_in"] = len(candidates) + len(quarantine)
    counts.update(q["reason"] for q in quarantine)  # malformed_row, or a bad line's invalid_utf8 / invalid_json / not_object

    kept: list[dict] = []
    seen: set[str] = set()
    for row in candidates:
        reason = "duplicate_id" if row["id"] in seen else _prompt_filter(row["messages"], english_only)
        seen.add(row["id"])
        if reason:
            counts[reason] += 1
            quarantine.append({"row": row, "reason": reason})
        else:
            kept.append(row)

    if spec.path is None and spec.n_prompts is not None and len(kept) > spec.n_prompts:
        kept = random.Random(spec.seed).sample(kept, spec.n_prompts)
        counts["not_sampled"] = len(candidates) - counts["duplicate_id"] - counts["multi_turn"] - \
            counts["non_english"] - len(kept)

    if spec.path is None:
        kept = _ask_teacher(spec, kept, counts, quarantine,
                            Path(cache_path) if cache_path else out_think.with_name("teacher_cache.sqlite"))
    else:
        accepted = []
        for row in kept:
            parsed = _check_split(row["thought"], row["response"])
            if isinstance(parsed, str):
                counts[parsed] += 1
                quarantine.append({"row": row, "reason": parsed})
            else:
                accepted.append(row)
        kept = accepted

    counts["kept"] = len(kept)
    write_json_lines(out_think, [{"id": r["id"], "source": r.get("source"),
                                  "messages": sft_messages(r["messages"], r["thought"], r["response"], WARM_THINK)}
                                 for r in kept])
    write_json_lines(out_nothink, [{"id": r["id"], "source": r.get("source"),
                                    "messages": sft_messages(r["messages"], r["thought"], r["response"], WARM_NOTHINK)}
                                   for r in kept])
    write_json_lines(stats_path.with_name(stats_path.stem.replace(".stats", "") + ".quarantine.jsonl"), quarantine)
    stats = {"counts": dict(sorted(counts.items())), "source": "path" if spec.path else "teacher"}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    if not kept:
        raise SFTDataError(f"no SFT example survived the filters; see {stats_path}")
    return SFTDataResult(out_think, out_nothink, stats)


def _rows_from_file(path: str, data_dir: Path | None, quarantine: list[dict]) -> list[dict]:
    out = []
    for n, row in _read_rows(resolve_path(path, data_dir)):
        if isinstance(row, BadLine):  # not a UTF-8 JSON object: quarantined as its text
            quarantine.append({"row": {"line": n, "text": row.text}, "reason": row.reason, "detail": row.detail})
            continue
        msgs = _messages_of(row)
        if msgs is None or not isinstance(row.get("thought"), str) or not isinstance(row.get("response"), str):
            quarantine.append({"row": row, "reason": "malformed_row"})
            continue
        out.append({"id": _row_id(row, msgs), "messages": msgs, "thought": row["thought"].strip(),
                    "response": row["response"].strip(), "source": row.get("source", path)})
    return out


def _check_split(thought: str, response: str) -> tuple[str, str] | str:
    if any(t in thought or t in response for t in TAGS):
        return "stray_tags"
    if not thought.strip():
        return "empty_thought"
    if not response.strip():
        return "empty_response"
    return thought, response


def teacher_messages(messages: list[dict]) -> list[dict]:
    """The request the teacher gets: the user turn with the planning instruction appended."""
    *head, last = messages
    return [*head, {"role": last["role"], "content": f"{last['content']}\n\n{PLANNING_INSTRUCTION}"}]


def _ask_teacher(spec: SFTDataSpec, rows: list[dict], counts: Counter, quarantine: list[dict],
                 cache_path: Path) -> list[dict]:
    """Each row's thought and response from the teacher (:func:`rlmt.data.teacher.ask_until_parsed`): an answer
    that does not split is asked again; what never splits is quarantined."""
    from rlmt.data.teacher import ask_until_parsed

    assert spec.teacher is not None
    by_id = {r["id"]: r for r in rows}
    accepted, failures = ask_until_parsed(spec.teacher, cache_path,
                                          {i: teacher_messages(r["messages"]) for i, r in by_id.items()},
                                          parse_teacher_output, counts=counts, desc="teacher", label="try")
    for row_id, failure in failures.items():
        quarantine.append({"row": by_id[row_id], **failure.record()})
    return [{**r, "thought": accepted[r["id"]][0], "response": accepted[r["id"]][1]} for r in rows if r["id"] in accepted]
