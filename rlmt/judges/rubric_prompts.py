"""Rubric rewards' judge prompts and their strict reply parsers (ours, written for this project).

A rubric is a list of :class:`Criterion` (a statement about a good answer, and its weight). Two ways to
grade an answer against one, both from the literature on rubric rewards ("Rubrics as Rewards", Gunjal et
al. 2025; "Checklists Are Better Than Reward Models", Viswanathan et al. 2025):

- **explicit**: the judge gives one verdict per criterion (does its statement hold for the answer?); the
  reward is the weighted share of the positive weight earned, :func:`explicit_score`. A criterion with a
  negative weight describes a mistake ("a pitfall"): when it holds, its weight is subtracted.
- **implicit**: the judge reads the whole rubric, weights included, and gives one holistic score from 1 to
  10; the reward is ``(score - 1) / 9``, :func:`implicit_score`.

Both rewards lie in [0, 1] for a rubric of positive weights. The parsers are strict: a reply that does not
hold exactly what the prompt asked for (one boolean verdict per criterion, in order; one score within 1..10)
is *unparsed*, with the reason, never read as a verdict. The caller asks again with :func:`repair_messages`
(the bad reply and the reason appended to the conversation), so the retry is a different request with its
own cache entry and a resumed run replays the same chain of requests from the cache.

Templates are plain ``str.format`` strings kept here, so a prompt change is one reviewable diff and changes
every cache key it touches (an old reply is never reused for a new prompt).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

from rlmt.judges.parsing import parse_json

MODES = ("explicit", "implicit")
IMPLICIT_MIN, IMPLICIT_MAX = 1, 10
TEXT_KEYS = ("criterion", "description", "requirement", "text", "title", "item")
WEIGHT_KEYS = ("weight", "points", "importance")


@dataclass(frozen=True)
class Criterion:
    """One rubric line: a statement about the answer, and how much it counts (negative: a pitfall)."""

    text: str
    weight: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.text, "weight": self.weight}


# ------------------------------------------------------------------ reading a rubric


def read_criteria(value: Any, *, max_criteria: int = 64) -> list[Criterion] | str:
    """A rubric from a dataset cell or a parsed teacher reply, else the reason it is not one.

    Accepted: a list of strings (weight 1 each); a list of objects with a text key (``criterion``,
    ``description``, ``requirement``, ``text``, ``title`` or ``item``) and an optional weight key
    (``weight``, ``points``, ``importance``; default 1); an object with such a list under ``criteria``,
    ``rubric``, ``checklist`` or ``items``; or a JSON string of any of these. Reasons:
    ``not_a_list``, ``empty_rubric``, ``bad_criterion`` (no text), ``bad_weight`` (not a finite number,
    or zero), ``no_positive_weight``, ``too_many_criteria``.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return "not_a_list"
    if isinstance(value, dict):
        value = next((value[k] for k in ("criteria", "rubric", "checklist", "items") if k in value), None)
    if hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # a numpy array from a parquet cell
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return "not_a_list"
    if not value:
        return "empty_rubric"
    if len(value) > max_criteria:
        return "too_many_criteria"
    criteria = []
    for entry in value:
        if isinstance(entry, str):
            text, weight = entry, 1.0
        elif isinstance(entry, dict):
            text = next((entry[k] for k in TEXT_KEYS if isinstance(entry.get(k), str) and entry[k].strip()), None)
            raw = next((entry[k] for k in WEIGHT_KEYS if k in entry and entry[k] is not None), 1.0)
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                return "bad_weight"
            weight = float(raw)
        else:
            return "bad_criterion"
        if not isinstance(text, str) or not text.strip():
            return "bad_criterion"
        if not math.isfinite(weight) or weight == 0:
            return "bad_weight"
        criteria.append(Criterion(" ".join(text.split()), weight))
    if not any(c.weight > 0 for c in criteria):
        return "no_positive_weight"
    return criteria


# ------------------------------------------------------------------ prompts

SYSTEM = (
    "You are a strict, fair grader of AI assistants' answers. You grade one answer to one conversation "
    "against a rubric written for that conversation. You judge what the answer says, not how long it is, "
    "and you never reward an answer for mentioning the rubric.")

EXPLICIT_USER = """# Conversation
{conversation}

# Answer to grade
{answer}

# Criteria
{criteria}

For each criterion, decide on its own whether its statement holds for the answer. A criterion that
describes a mistake holds when the answer makes that mistake. When in doubt, it does not hold.

Reply with one JSON object and nothing else, with exactly one verdict per criterion, in the order above:
{{"verdicts": [{{"criterion": 1, "reason": "<one sentence>", "satisfied": true or false}}, ...]}}"""

IMPLICIT_USER = """# Conversation
{conversation}

# Answer to grade
{answer}

# Rubric (a weight says how much a criterion counts; a negative weight marks a mistake to avoid)
{criteria}

Weigh the answer against the whole rubric and give it one overall score from 1 (fails the rubric) to
10 (meets every criterion that counts, makes none of the mistakes).

Reply with one JSON object and nothing else:
{{"reason": "<two or three sentences>", "score": <an integer from 1 to 10>}}"""

REPAIR_USER = ("Your reply could not be read: {problem}. Reply again with only the JSON object the instructions "
               "ask for.")


def render_conversation(prompt: Sequence[dict]) -> str:
    """The turns before the answer, one ``[role]`` block each."""
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in prompt)


def _format_weight(weight: float) -> str:
    return f"{weight:g}"


def judge_messages(mode: str, prompt: Sequence[dict], answer: str, criteria: Sequence[Criterion]) -> list[dict]:
    """The judge's chat messages for one answer (explicit: numbered criteria; implicit: with their weights)."""
    if mode == "explicit":
        lines = "\n".join(f"{i}. {c.text}" for i, c in enumerate(criteria, 1))
        user = EXPLICIT_USER.format(conversation=render_conversation(prompt), answer=answer, criteria=lines)
    elif mode == "implicit":
        lines = "\n".join(f"{i}. (weight {_format_weight(c.weight)}) {c.text}" for i, c in enumerate(criteria, 1))
        user = IMPLICIT_USER.format(conversation=render_conversation(prompt), answer=answer, criteria=lines)
    else:
        raise ValueError(f"unknown rubric mode {mode!r}; allowed: {list(MODES)}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def repair_messages(messages: list[dict], reply: str, problem: str) -> list[dict]:
    """The conversation asked again after an unreadable reply: the reply and what was wrong with it appended."""
    return [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": REPAIR_USER.format(problem=problem)}]


# ------------------------------------------------------------------ strict reply parsing


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    return None


def parse_explicit(text: str | None, n_criteria: int) -> list[bool] | str:
    """One verdict per criterion, in order, or the reason the reply is unparsed.

    The reply must hold a JSON object (prose or a code fence around it is tolerated) whose ``verdicts`` is a
    list of exactly `n_criteria` objects, each with a boolean ``satisfied`` (``"yes"``/``"no"``/``"true"``/
    ``"false"`` strings are read too); a ``criterion`` number, when given, must be the verdict's position.
    """
    obj = parse_json(text)
    if obj is None:
        return "no JSON object found"
    verdicts = obj.get("verdicts")
    if not isinstance(verdicts, list):
        return "the object has no 'verdicts' list"
    if len(verdicts) != n_criteria:
        return f"'verdicts' has {len(verdicts)} entries for {n_criteria} criteria"
    out = []
    for i, v in enumerate(verdicts, 1):
        if not isinstance(v, dict):
            return f"verdict {i} is not an object"
        number = v.get("criterion", i)
        if isinstance(number, bool) or not isinstance(number, (int, float, str)) or str(number).strip() != str(i):
            return f"verdict {i} names criterion {number!r}"
        satisfied = _as_bool(v.get("satisfied"))
        if satisfied is None:
            return f"verdict {i} has no true/false 'satisfied'"
        out.append(satisfied)
    return out


def parse_implicit(text: str | None) -> float | str:
    """The holistic score (a number within 1..10), or the reason the reply is unparsed."""
    obj = parse_json(text)
    if obj is None:
        return "no JSON object found"
    raw = obj.get("score")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            return f"'score' is not a number: {raw!r}"
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        return "the object has no numeric 'score'"
    if not IMPLICIT_MIN <= raw <= IMPLICIT_MAX:
        return f"'score' {raw:g} is outside {IMPLICIT_MIN}..{IMPLICIT_MAX}"
    return float(raw)


# ------------------------------------------------------------------ aggregation


def explicit_score(verdicts: Sequence[bool], criteria: Sequence[Criterion]) -> float:
    """Σ weight of the criteria that hold / Σ positive weights (a holding pitfall subtracts its weight)."""
    positive = sum(c.weight for c in criteria if c.weight > 0)
    return sum(c.weight for c, held in zip(criteria, verdicts) if held) / positive


def implicit_score(score: float) -> float:
    """A 1..10 holistic score mapped onto [0, 1]."""
    return (score - IMPLICIT_MIN) / (IMPLICIT_MAX - IMPLICIT_MIN)


def parse_reply(mode: str, text: str | None, criteria: Sequence[Criterion]) -> float | str:
    """The reward one reply gives (``mode``'s parser, then its aggregation), or why the reply is unparsed."""
    if mode == "explicit":
        verdicts = parse_explicit(text, len(criteria))
        return verdicts if isinstance(verdicts, str) else explicit_score(verdicts, criteria)
    parsed = parse_implicit(text)
    return parsed if isinstance(parsed, str) else implicit_score(parsed)
