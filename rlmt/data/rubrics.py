"""The ``rubrics`` stage: one rubric per prompt for a ``rubric`` reward, written to a keyed rubric file.

Two sources (``reward_models.<name>.rubrics``, :class:`rlmt.rewards.rubric.RubricSourceSpec`):

- ``generate``: each prompt of the mixtures that the reward's cells train on (train and val) goes once to a
  teacher endpoint (:class:`rlmt.data.teacher.TeacherClient`: SQLite answer cache, concurrent requests,
  HTTP retries), which must reply with a JSON list of weighted criteria. A reply that is not one is asked
  again with the reason appended to the conversation (``max_tries`` asks in all; every ask is its own cache
  entry, so a rerun replays the chain from the cache and asks only what is missing);
- ``column`` with ``path``: the rows of a published rubric/checklist set (the prompt and the column).

Every prompt that ends without a rubric is written to the quarantine JSONL with its reason and counted in
the stats JSON, never dropped silently: ``teacher_error`` (the endpoint failed for good), the reading
reasons of :func:`rlmt.judges.rubric_prompts.read_criteria` (``not_a_list``, ``empty_rubric``,
``bad_criterion``, ``bad_weight``, ``no_positive_weight``, ``too_many_criteria``), ``too_few_criteria``,
``no_json``; for a file also ``invalid_json``/``invalid_utf8``/``not_object`` and ``malformed_row`` (no
usable prompt), and ``duplicate_prompt`` (a prompt listed twice: first kept).

The rubric file's rows are ``{key, id, criteria: [{criterion, weight}]}``; ``key`` is :func:`prompt_key` of
the prompt's messages, which is how the reward finds a rubric at training time (whatever the row's id).

Imports nothing heavy at module level (the reward imports :func:`prompt_key` and :func:`load_rubric_file`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rlmt.jsonl import write_json_lines

RUBRIC_SYSTEM = (
    "You write grading rubrics for answers of AI assistants. A rubric is a short list of criteria, each one "
    "self-contained statement that a grader can check against an answer on its own, specific to the "
    "conversation (not generic advice such as 'is helpful').")

RUBRIC_USER = """# Conversation
{conversation}

# Task
Write a rubric for the assistant's next answer to this conversation: {min_criteria} to {max_criteria} criteria.
Give each criterion a weight: 5 for what an answer must do, 3 or 4 for what matters, 1 or 2 for what is nice
to have, and -1 to -5 for a mistake a poor answer makes (its statement then describes the mistake).

Reply with one JSON object and nothing else:
{{"criteria": [{{"criterion": "<statement>", "weight": <integer>}}, ...]}}"""

REPAIR_USER = "Your reply could not be used: {problem}. Reply again with only the JSON object asked for."


class RubricDataError(ValueError):
    """Rubric settings or inputs that cannot be used."""


@dataclass
class RubricResult:
    path: Path
    stats: dict


# ------------------------------------------------------------------ keys and the rubric file


def canonical_prompt(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The prompt's turns as ``{role, content}`` only (the form the key is computed on)."""
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))} for m in messages]


def prompt_key(messages: Sequence[Mapping[str, Any]]) -> str:
    """A digest of the prompt's turns: how a rubric is found for a prompt, whatever its row id."""
    blob = json.dumps(canonical_prompt(messages), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def load_rubric_file(path: str | Path) -> dict[str, list]:
    """prompt key -> criteria of a rubric file (every row re-read: a hand-edited bad row is an error)."""
    from rlmt.jsonl import iter_json_lines
    from rlmt.judges.rubric_prompts import read_criteria

    path = Path(path)
    if not path.is_file():
        raise RubricDataError(f"rubric file not found: {path} (`rlmt data rubrics` makes it)")
    out: dict[str, list] = {}
    for n, row in iter_json_lines(path, RubricDataError):
        criteria = read_criteria(row.get("criteria"))
        if not isinstance(row.get("key"), str) or isinstance(criteria, str):
            raise RubricDataError(f"{path}:{n}: not a rubric row ({criteria if isinstance(criteria, str) else 'no key'})")
        out[row["key"]] = criteria
    return out


# ------------------------------------------------------------------ prompts


def rubric_mixtures(cfg, name: str) -> list[str]:
    """The mixtures whose prompts reward `name`'s rubric file must cover: those of the cells whose reward uses it
    (itself, or a mix with it as a part), and the reward win rate's mixture when its reward uses it."""
    from rlmt.rewards import reward_inputs
    from rlmt.rewards.rubric import input_key

    key = input_key(name)
    uses = {rm for rm in cfg.reward_models if key in reward_inputs(rm, cfg.reward_models)}
    found = {cell.mixture for cell in cfg.cells() if cell.rm in uses}
    winrate = cfg.evaluation.benchmarks.get("reward-winrate")
    if winrate is not None and winrate.enabled:
        judge = winrate.options.get("reward_model") or next(iter(cfg.reward_models))
        if judge in uses and winrate.options.get("mixture") in cfg.mixtures:
            found.add(winrate.options["mixture"])
    return sorted(found)


def prompt_rows(paths: Iterable[str | Path]) -> list[dict]:
    """``{id, messages}`` of mixture parquet files (train, val), in order."""
    import polars as pl

    rows = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise RubricDataError(f"prompt file not found: {path}")
        frame = pl.read_parquet(path)
        if not {"id", "messages"} <= set(frame.columns):
            raise RubricDataError(f"{path}: a mixture file needs the columns id and messages")
        rows += [{"id": str(r["id"]), "messages": r["messages"]} for r in frame.select("id", "messages").to_dicts()]
    return rows


def rubric_request(messages: Sequence[Mapping[str, Any]], spec) -> list[dict]:
    """The teacher's messages for one prompt."""
    from rlmt.judges.rubric_prompts import render_conversation

    user = RUBRIC_USER.format(conversation=render_conversation(canonical_prompt(messages)),
                              min_criteria=spec.min_criteria, max_criteria=spec.max_criteria)
    return [{"role": "system", "content": RUBRIC_SYSTEM}, {"role": "user", "content": user}]


def parse_rubric_reply(text: str, spec) -> list | str:
    """The criteria of a teacher's reply, or the reason it has none."""
    from rlmt.judges.parsing import parse_json
    from rlmt.judges.rubric_prompts import read_criteria

    obj = parse_json(text)
    if obj is None:
        obj = parse_json(text, kind=list)
    if obj is None:
        return "no_json"
    criteria = read_criteria(obj, max_criteria=spec.max_criteria)
    if isinstance(criteria, str):
        return criteria
    if len(criteria) < spec.min_criteria:
        return "too_few_criteria"
    return criteria


# ------------------------------------------------------------------ the stage


def build_rubrics(name: str, spec, out: str | Path, *, prompt_files: Sequence[str | Path] = (),
                  stats_path: str | Path | None = None, cache_path: str | Path | None = None,
                  data_dir: Path | None = None) -> RubricResult:
    """Write reward `name`'s rubric file (`spec`: its ``RubricRewardSpec``); quarantine and stats beside it.

    `prompt_files`: the mixtures' train/val parquet files the rubrics are for (a teacher writes one per prompt;
    a column file is checked against them: prompts it has no rubric for are counted ``prompts_without_rubric``).
    """
    out = Path(out)
    stats_path = Path(stats_path) if stats_path else out.with_name("stats.json")
    quarantine_path = stats_path.with_name("quarantine.jsonl")
    counts: Counter[str] = Counter()
    quarantine: list[dict] = []
    source = spec.rubrics
    if source.generate is not None:
        prompts = _unique_prompts(prompt_rows(prompt_files), counts, quarantine)
        counts["prompts"] = len(prompts)
        rows = _ask_teacher(source.generate, prompts, counts, quarantine,
                            Path(cache_path) if cache_path else out.with_name("teacher_cache.sqlite"))
    elif source.path is not None:
        rows = _rows_from_file(source.column, _resolve(source.path, data_dir), counts, quarantine)
        if prompt_files:
            have = {r["key"] for r in rows}
            wanted = {prompt_key(r["messages"]) for r in prompt_rows(prompt_files)}
            counts["prompts"] = len(wanted)
            counts["prompts_without_rubric"] = len(wanted - have)
    else:
        raise RubricDataError(f"reward_models.{name}.rubrics: a column without a path has no rubric file to make "
                              "(the reward reads the training rows' column)")
    counts["kept"] = len(rows)
    write_json_lines(out, rows)
    write_json_lines(quarantine_path, quarantine)
    stats = {"reward": name, "source": "generate" if source.generate is not None else "column",
             "counts": dict(sorted(counts.items()))}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(stats, indent=2) + "\n")
    if not rows:
        raise RubricDataError(f"no rubric survived for reward {name!r}; see {stats_path} and {quarantine_path}")
    return RubricResult(out, stats)


def _unique_prompts(rows: list[dict], counts: Counter, quarantine: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for row in rows:
        key = prompt_key(row["messages"])
        if key in seen:
            counts["duplicate_prompt"] += 1
            continue  # the same prompt in train and val, or twice: one rubric serves both
        seen.add(key)
        out.append({**row, "key": key})
    return out


def _ask_teacher(spec, prompts: list[dict], counts: Counter, quarantine: list[dict], cache_path: Path) -> list[dict]:
    """One rubric per prompt from the teacher (:func:`rlmt.data.teacher.ask_until_parsed`): a malformed rubric is
    asked again with the reason appended; what never parses is quarantined."""
    from rlmt.data.teacher import ask_until_parsed

    def repair(conversation: list[dict], answer: str, problem: str) -> list[dict]:
        return [*conversation, {"role": "assistant", "content": answer},
                {"role": "user", "content": REPAIR_USER.format(problem=problem)}]

    by_key = {p["key"]: p for p in prompts}
    done, failures = ask_until_parsed(spec, cache_path, {k: rubric_request(p["messages"], spec) for k, p in by_key.items()},
                                      lambda answer: parse_rubric_reply(answer, spec), counts=counts, desc="rubrics",
                                      label="ask", repair=repair)
    for key, failure in failures.items():
        p = by_key[key]
        quarantine.append({"id": p["id"], "key": key, "messages": p["messages"], **failure.record()})
    return [{"key": p["key"], "id": p["id"], "criteria": [c.to_dict() for c in done[p["key"]]]}
            for p in prompts if p["key"] in done]


def _resolve(path: str, data_dir: Path | None) -> Path:
    if "{data_dir}" in path:
        if data_dir is None:
            raise RubricDataError(f"{path}: uses {{data_dir}} but neither $RLMT_DATA_DIR nor data_dir is set")
        path = path.replace("{data_dir}", str(data_dir))
    return Path(path)


def _rows_from_file(column: str, path: Path, counts: Counter, quarantine: list[dict]) -> list[dict]:
    """Rubric rows of a published set: each row's prompt (``messages`` or ``prompt``) and its `column`."""
    from rlmt.jsonl import BadLine, iter_json_lines
    from rlmt.judges.rubric_prompts import read_criteria

    if not path.is_file():
        raise RubricDataError(f"rubric file not found: {path}")
    if path.suffix == ".parquet":
        import polars as pl

        numbered: list[tuple[int, Any]] = list(enumerate(pl.read_parquet(path).to_dicts(), 1))
    else:
        numbered = list(iter_json_lines(path))
    out: dict[str, dict] = {}
    for n, row in numbered:
        counts["rows_in"] += 1
        if isinstance(row, BadLine):
            counts[row.reason] += 1
            quarantine.append({"line": n, "text": row.text, "reason": row.reason, "detail": row.detail})
            continue
        messages = _prompt_of(row)
        if messages is None:
            counts["malformed_row"] += 1
            quarantine.append({"line": n, "row": row, "reason": "malformed_row", "detail": "no messages or prompt"})
            continue
        criteria = read_criteria(row.get(column))
        if isinstance(criteria, str):
            counts[criteria] += 1
            quarantine.append({"line": n, "row": row, "reason": criteria, "detail": f"column {column!r}"})
            continue
        key = prompt_key(messages)
        if key in out:
            counts["duplicate_prompt"] += 1
            quarantine.append({"line": n, "row": row, "reason": "duplicate_prompt"})
            continue
        out[key] = {"key": key, "id": str(row.get("id", key)), "criteria": [c.to_dict() for c in criteria]}
    return list(out.values())


def _prompt_of(row: dict) -> list[dict] | None:
    msgs = row.get("messages", row.get("prompt"))
    if isinstance(msgs, str) and msgs.strip():
        return [{"role": "user", "content": msgs}]
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
        while msgs and msgs[-1].get("role") == "assistant":  # a row may hold a reference answer after the prompt
            msgs = msgs[:-1]
        return canonical_prompt(msgs) or None
    return None

