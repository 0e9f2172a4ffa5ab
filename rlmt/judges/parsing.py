"""Parsers for judge replies. Each returns the parsed value or ``None``: a ``None`` is recorded
as a parse failure and counted, never turned into a verdict (the reference code scored WildBench
parse failures as -100, which punishes a model for the judge's formatting)."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def _json_candidates(text: str, opener: str, closer: str) -> list[str]:
    """Balanced ``opener...closer`` spans, outermost first (strings are respected)."""
    spans, depth, start, in_str, esc = [], 0, None, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth:
            in_str = True
        elif ch == opener:
            if depth == 0:
                start = i
            depth += 1
        elif ch == closer and depth:
            depth -= 1
            if depth == 0 and start is not None:
                spans.append(text[start:i + 1])
    return spans


def parse_json(text: str | None, kind: type = dict) -> Any:
    """The first JSON object (or list) in a reply, tolerating code fences and prose around it."""
    if not text:
        return None
    bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    opener, closer = ("{", "}") if kind is dict else ("[", "]")
    for body in bodies:
        for span in _json_candidates(body, opener, closer):
            try:
                value = json.loads(span)
            except json.JSONDecodeError:
                continue
            if isinstance(value, kind):
                return value
    return None


def parse_better(text: str | None) -> str | None:
    """AlpacaEval2 paper protocol: "A" or "B"."""
    obj = parse_json(text)
    value = str(obj.get("better", "")).strip().upper() if obj else ""
    return value if value in ("A", "B") else None


def parse_preference_letter(text: str | None) -> str | None:
    """AlpacaEval2 official style: the single character 'm' or 'M' (case matters)."""
    if text is None:
        return None
    token = text.strip().strip("\"'`().:").strip()
    return token if token in ("m", "M") else None


WB_CHOICES = ("A++", "A+", "A=B", "B+", "B++")


def _bare_json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def parse_wildbench_choice_official(text: str | None) -> str | None:
    """WildBench's own rule (``batch_results_format.py``): the reply must be bare JSON
    (``json.loads`` of the whole text: a fenced or prefixed reply is dropped) with a known
    ``choice``."""
    obj = _bare_json(text)
    choice = obj.get("choice") if isinstance(obj, dict) else None
    return choice if choice in WB_CHOICES else None


def parse_wildbench_score_official(text: str | None) -> float | None:
    """WildBench's own rule: bare JSON with a ``score``, taken as ``float(score)`` whatever its
    value ("0" and 11 are kept)."""
    obj = _bare_json(text)
    if not isinstance(obj, dict) or "score" not in obj:
        return None
    try:
        return float(obj["score"])
    except (TypeError, ValueError):
        return None  # official: float() raises and the table script stops


def parse_wildbench_choice(text: str | None) -> str | None:
    """Our lenient reading (option ``reply_parsing: lenient``): JSON inside fences or prose, a
    truncated object's ``choice``."""
    obj = parse_json(text)
    if obj is not None:
        choice = str(obj.get("choice", "")).strip().replace(" ", "")
        if choice in WB_CHOICES:
            return choice
    if text:  # a truncated JSON object still names its choice
        m = re.search(r'"choice"\s*:\s*"\s*(A\+\+|A\+|A=B|B\+\+|B\+)\s*"', text)
        if m:
            return m.group(1)
    return None


def parse_wildbench_score(text: str | None) -> float | None:
    """Our lenient reading: JSON anywhere in the reply, a truncated object's score; 1-10 only."""
    obj = parse_json(text)
    raw = obj.get("score") if obj else None
    if raw is None and text:
        m = re.search(r'"score"\s*:\s*"?(\d+(?:\.\d+)?)', text)
        raw = m.group(1) if m else None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if 1 <= value <= 10 else None


ARENA_VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
ARENA_LABELS = ("A>B", "A>>B", "A=B", "A<<B", "A<B", "B>A", "B>>A", "B=A", "B<<A", "B<A")  # the official table
_ARENA_OFFICIAL = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))  # arena-hard-v2.0.yaml
_ARENA = re.compile(r"\[\[\s*(A>>B|A>B|A=B|B>A|B>>A|A<<B|A<B|B<<A|B<A)\s*\]\]")
_MIRROR = {"A<<B": "B>>A", "A<B": "B>A", "B<<A": "A>>B", "B<A": "A>B"}


def parse_arena_verdict_official(text: str | None) -> str | None:
    """Arena-Hard v2's own rule (``gen_judgment.get_score`` with the v2 regexes): the reply is
    upper-cased, ``[[X]]`` labels are searched first and ``[X]`` only if there is none, and the
    *last* match wins. A label outside the official table (``[[A>>>B]]``) is unparsed here: the
    official ``show_result`` would stop with a KeyError on it."""
    if not text:
        return None
    upper = text.upper()
    for pattern in _ARENA_OFFICIAL:
        found = [m for m in pattern.findall(upper) if m != ""]
        if found:
            label = found[-1].strip("\n")
            return label if label in ARENA_LABELS else None
    return None


def parse_arena_verdict(text: str | None) -> str | None:
    """Our lenient reading (option ``verdict_parsing: lenient``): ``[[ A>B ]]`` with spaces is read;
    only double brackets, case-sensitive; mirrored labels normalised (``B<A`` -> ``A>B``); several
    *different* labels in one reply count as unparsed (official takes the last)."""
    if not text:
        return None
    found = {_MIRROR.get(m, m) for m in _ARENA.findall(text)}
    return found.pop() if len(found) == 1 else None


_RUBRIC_OFFICIAL = (re.compile(r"(.*?):\s*(?:Score\s+)?(-?\d+(?:\.\d+)?)"), re.compile(r"(.*?):\s*\[(-?\d+(?:\.\d+)?)\]"))


def parse_rubric_official(text: str | None) -> dict[str, float]:
    """Creative Writing v3's own rule (``core/scoring.py``): every ``name: N``, ``name: Score N`` and
    ``name: [N]`` anywhere in the reply, the name taken verbatim (``**Meandering**`` stays bold, so
    it is never recognised as a flaw), scores above 20 dropped, negative ones kept."""
    scores: dict[str, float] = {}
    for pattern in _RUBRIC_OFFICIAL:
        for name, value in pattern.findall(text or ""):
            if float(value) <= 20:
                scores[name.strip()] = float(value)
    return scores


def parse_rubric(text: str | None, criteria: list[str]) -> dict[str, float]:
    """Our lenient reading (option ``rubric_parsing: lenient``): ``Criterion: score`` lines (after
    ``[Scores]`` when present), names matched to the rubric ignoring case, bullets and bold;
    scores outside 0..20 are ignored."""
    if not text:
        return {}
    body = text.split("[Scores]", 1)[1] if "[Scores]" in text else text
    wanted = {c.lower(): c for c in criteria}
    scores: dict[str, float] = {}
    for line in body.splitlines():
        m = re.match(r"^\s*[-*]?\s*\**([^:*]+?)\**\s*:\s*\**\s*(\d+(?:\.\d+)?)", line)
        if not m:
            continue
        name = wanted.get(m.group(1).strip().lower())
        value = float(m.group(2))
        if name and 0 <= value <= 20:
            scores[name] = value
    return scores


def parse_string_list(text: str | None) -> list[str] | None:
    value = parse_json(text, kind=list)
    if value is None:
        return None
    items = [str(v).strip() for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return items or None


def parse_trait_differences(text: str | None) -> list[dict] | None:
    value = parse_json(text, kind=list)
    if value is None:
        return None
    out = [{"trait": str(v["trait"]).strip(), "more_in": str(v.get("more_in", "")).strip().upper()}
           for v in value if isinstance(v, dict) and str(v.get("trait", "")).strip()]
    return out or None


def parse_winner(text: str | None) -> str | None:
    obj = parse_json(text)
    value = str(obj.get("winner", "")).strip().lower() if obj else ""
    return {"a": "A", "b": "B", "tie": "tie"}.get(value)
