"""Thinking formats: how a policy lays out its thought and its answer, and the one rule that
separates them again.

``longcot_config.json`` sits in every model directory and is the single source of truth for the
format (fields as in the reference code). The same :func:`extract` is used by the training
reward, the DPO pair builder and every benchmark, so a model is never scored one way in training
and another way in evaluation (the reference code split at the *first* delimiter in training and
the *last* in evaluation).

The extraction rule
-------------------
For a format without thinking (``longcot: false``) the whole output, stripped, is the answer.
Otherwise:

1. **Delimiter** (``</think>`` for warm-start models, ``<response>`` for zero models): the
   thought ends at its *first* occurrence. If it never occurs the thought never ended (typically a
   truncated generation, or a model that skipped its thought): the answer is empty and the issue
   is ``missing-delimiter``. The thought is *never* passed on as an answer, strict or not (the
   reference scored thought+answer here when not strict; we keep the thought away from the
   reward model always, so an unfinished thought earns the reward of an empty answer).
2. A delimiter that occurs *again* after the first is kept in the answer text and makes the
   output malformed (``repeated-delimiter``); so does a thinking tag (``<think>``, ``</think>``)
   inside the answer (``think-tag-in-answer``): the thought leaked into the answer.
3. **Start marker** (``<think>``): removed from the start of the thought if present. A missing
   marker is tolerated (zero models often omit it, and some chat templates put it in the
   generation prompt): it is recorded as a *note*, not an issue. For zero think models the
   ``</think>`` closing tag before ``<response>`` is removed as well (its absence is a note).
4. **End delimiter** (``</response>``; a ``<response>`` delimiter implies it even when the file's
   ``end_delimiter`` is null, as in the reference): the answer is cut at its first occurrence.
   Text after it is dropped and noted (``text-after-end``). A missing end delimiter means the
   answer was cut off by the token limit: the partial answer is kept and the output is
   malformed (``missing-end-delimiter``). Generation backends therefore keep the stop string in
   the output (vLLM: ``include_stop_str_in_output=True``; transformers keeps it by default).
5. Thought and answer are stripped of surrounding whitespace. An empty answer is malformed
   (``empty-answer``).
6. ``strict``: any *issue* (not a note) makes the answer the literal ``[NULL]`` (as the paper's
   ``reward_model.strict``), which the reward model then scores.

``Extraction.well_formed`` is true when the output has no issue; notes never change the answer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

LONGCOT_FILE = "longcot_config.json"
NULL_ANSWER = "[NULL]"
STOP_STRING = "</response>"

REQUIRED_WHEN_LONGCOT = ("longcot_delimiter", "end_delimiter", "start_think_marker")
THINK_TAGS = ("<think>", "</think>")

FormatName = Literal["warm-think", "warm-nothink", "zero-think", "zero-nothink"]


class ThinkingFormatError(ValueError):
    """A longcot_config.json that cannot be read."""


@dataclass(frozen=True)
class ThinkingFormat:
    """The fields of ``longcot_config.json``."""

    longcot: bool
    longcot_delimiter: str | None = None
    end_delimiter: str | None = None
    start_think_marker: str | None = None
    prompt_for_longcot: str | None = None

    def __post_init__(self) -> None:
        if self.longcot and not self.longcot_delimiter:
            raise ThinkingFormatError("longcot is true but longcot_delimiter is empty")

    @property
    def name(self) -> FormatName:
        if not self.longcot:
            return "warm-nothink"
        if self.longcot_delimiter == "<response>":
            return "zero-think" if self.start_think_marker else "zero-nothink"
        return "warm-think"

    @property
    def thinks(self) -> bool:
        return self.name in ("warm-think", "zero-think")

    @property
    def answer_end(self) -> str | None:
        """Where the answer ends: ``end_delimiter``, or ``</response>`` for a ``<response>`` delimiter
        (the reference's default, so its zero configs with ``end_delimiter: null`` read the same)."""
        if not self.longcot:
            return None
        if self.end_delimiter:
            return self.end_delimiter
        return STOP_STRING if self.longcot_delimiter == "<response>" else None

    @property
    def stop_strings(self) -> list[str]:
        """Strings at which generation stops (zero models stop at ``</response>``)."""
        return [self.answer_end] if self.answer_end else []

    # ------------------------------------------------------------------ file I/O

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["prompt_for_longcot"] is None:
            del d["prompt_for_longcot"]
        return d

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / LONGCOT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "ThinkingFormat":
        if not isinstance(d, dict):
            raise ThinkingFormatError(f"{LONGCOT_FILE} must hold a JSON object, got {type(d).__name__}")
        known = {"longcot", "longcot_delimiter", "end_delimiter", "start_think_marker", "prompt_for_longcot"}
        unknown = set(d) - known
        if unknown:
            raise ThinkingFormatError(f"{LONGCOT_FILE}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}")
        if "longcot" not in d:
            raise ThinkingFormatError(f"{LONGCOT_FILE}: missing required field 'longcot'")
        if not isinstance(d["longcot"], bool):
            raise ThinkingFormatError(f"{LONGCOT_FILE}: 'longcot' must be true or false, got {d['longcot']!r}")
        if d["longcot"]:
            missing = [k for k in REQUIRED_WHEN_LONGCOT if k not in d]
            if missing:
                raise ThinkingFormatError(f"{LONGCOT_FILE}: missing required field(s) {missing} "
                                          "(a thinking format names all of them; use null for none)")
        for key in sorted(known - {"longcot"}):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise ThinkingFormatError(f"{LONGCOT_FILE}: {key!r} must be a string or null, got {d[key]!r}")
        try:
            return cls(**d)
        except ThinkingFormatError as err:
            raise ThinkingFormatError(f"{LONGCOT_FILE}: {err}") from None

    @classmethod
    def load(cls, model_dir: str | Path) -> "ThinkingFormat":
        """Read a model directory's format; a directory without the file is a non-thinking model."""
        path = Path(model_dir) / LONGCOT_FILE
        if not path.exists():
            return WARM_NOTHINK
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ThinkingFormatError(f"{path}: not valid JSON ({err})") from None
        try:
            return cls.from_dict(raw)
        except ThinkingFormatError as err:
            raise ThinkingFormatError(f"{path.parent}/{err}") from None


WARM_THINK = ThinkingFormat(True, "</think>", None, "<think>")
WARM_NOTHINK = ThinkingFormat(False)
ZERO_THINK = ThinkingFormat(True, "<response>", "</response>", "<think>")
ZERO_NOTHINK = ThinkingFormat(True, "<response>", "</response>", None)

FORMATS: dict[str, ThinkingFormat] = {
    "warm-think": WARM_THINK,
    "warm-nothink": WARM_NOTHINK,
    "zero-think": ZERO_THINK,
    "zero-nothink": ZERO_NOTHINK,
}


def format_for(start: str, think: bool) -> ThinkingFormat:
    """The format of a cell's policy: start in {'warm-start', 'zero', 'none'}."""
    if start == "zero":
        return ZERO_THINK if think else ZERO_NOTHINK
    return WARM_THINK if think else WARM_NOTHINK


# ---------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Extraction:
    """One output split by :func:`extract`.

    ``issues`` make an output malformed (``strict`` scores it as ``[NULL]``); ``notes`` record
    tolerated irregularities that never change the answer.
    """

    thought: str
    answer: str
    answer_found: bool
    issues: tuple[str, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def well_formed(self) -> bool:
        return self.answer_found and not self.issues


def extract(output: str, fmt: ThinkingFormat, strict: bool = False) -> Extraction:
    """Split a raw model output into (thought, answer) by the module's rule."""
    if not fmt.longcot:
        answer = output.strip()
        issues = () if answer else ("empty-answer",)
        return Extraction("", NULL_ANSWER if strict and issues else answer, True, issues)

    delim = fmt.longcot_delimiter
    assert delim is not None
    head, found, tail = output.partition(delim)
    if not found:
        return Extraction(_clean_thought(output, fmt), NULL_ANSWER if strict else "", False, ("missing-delimiter",))

    issues: list[str] = []
    notes: list[str] = []
    thought = _clean_thought(head, fmt)
    if fmt.start_think_marker and not head.lstrip().startswith(fmt.start_think_marker):
        notes.append("missing-start-marker")
    if fmt.name == "zero-think" and not head.rstrip().endswith("</think>"):
        notes.append("missing-think-end")
    answer = tail
    end = fmt.answer_end
    if end:
        answer, ended, after = answer.partition(end)
        if not ended:
            issues.append("missing-end-delimiter")
        elif after.strip():
            notes.append("text-after-end")
    if delim in answer:
        issues.append("repeated-delimiter")
    if fmt.longcot and any(tag in answer for tag in THINK_TAGS if tag != delim):
        issues.append("think-tag-in-answer")
    answer = answer.strip()
    if not answer:
        issues.append("empty-answer")
    if strict and issues:
        answer = NULL_ANSWER
    return Extraction(thought, answer, True, tuple(issues), tuple(notes))


def _clean_thought(text: str, fmt: ThinkingFormat) -> str:
    text = text.strip()
    if fmt.start_think_marker and text.startswith(fmt.start_think_marker):
        text = text[len(fmt.start_think_marker):]
    if fmt.name == "zero-think":
        # "<think> ... </think> <response>": the closing think tag belongs to the layout.
        text = text.strip()
        if text.endswith("</think>"):
            text = text[: -len("</think>")]
    return text.strip()


# ---------------------------------------------------------------------- formatting


def format_output(thought: str, answer: str, fmt: ThinkingFormat) -> str:
    """The assistant turn a model of this format should write (used for SFT data)."""
    name = fmt.name
    if name == "warm-think":
        return f"<think>\n{thought.strip()}\n</think>\n\n{answer.strip()}"
    if name == "warm-nothink":
        return answer.strip()
    if name == "zero-think":
        return f"<think> {thought.strip()} </think> <response> {answer.strip()} </response>"
    return f"<response> {answer.strip()} </response>"


def sft_messages(prompt: list[dict], thought: str, answer: str, fmt: ThinkingFormat) -> list[dict]:
    """Chat messages for one SFT example: the prompt turns plus the formatted assistant turn."""
    if not prompt or prompt[-1].get("role") != "user":
        raise ValueError("an SFT prompt must end with a user turn")
    return [*prompt, {"role": "assistant", "content": format_output(thought, answer, fmt)}]
