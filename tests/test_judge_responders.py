"""Rule-following "judges" for the local OpenAI server, and generations files for the judged tests.

A responder reads the judge prompt the way a judge would and answers in the benchmark's reply
format with a verdict decided by markers in the answers: an evaluated answer contains ``ZQMODEL``
and either ``ZQGOOD`` (it should win) or ``ZQBAD`` (it should lose). So every expected score can be
computed by hand from the markers. ``ZQGARBLE`` in an answer makes the judge reply unparsable.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SECOND_HEADERS = ("## Response B", "Output (M):", "# Response B", "<|The Start of Assistant B's Answer|>")


def _user_text(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")


def _model_position(text: str) -> str:
    """'A' or 'B': where the evaluated (MODEL-marked) answer sits in a pairwise prompt."""
    for header in SECOND_HEADERS:
        if header in text:
            return "A" if text.index("ZQMODEL") < text.index(header) else "B"
    raise AssertionError("not a pairwise prompt")


def judge_responder(body: dict) -> str:
    text = _user_text(body)
    if "ZQGARBLE" in text:
        return "I cannot decide, sorry."
    if "Criterion name: score" in text:  # Creative Writing rubric
        criteria = re.findall(r"^- (.+?)( \(flaw\))?$", text, re.M)
        good = "ZQGOOD" in text
        lines = [f"{name}: {(4 if flaw else 16) if good else (12 if flaw else 8)}" for name, flaw in criteria]
        return "A decent piece.\n[Scores]\n" + "\n".join(lines)
    if '"score": <integer 1-10>' in text:  # WildBench score mode
        return json.dumps({"strengths": "s", "weaknesses": "w", "score": 8 if "ZQGOOD" in text else 3})
    pos = _model_position(text)
    other = "B" if pos == "A" else "A"
    winner = pos if "ZQGOOD" in text else other
    if "Output (M):" in text:  # AlpacaEval official style
        return "m" if winner == "A" else "M"
    if '"better"' in text:  # AlpacaEval paper protocol
        return json.dumps({"reason": "r", "better": winner})
    if '"choice"' in text:  # WildBench pairwise: a decisive win for GOOD, a slight one otherwise
        strong = "++" if "ZQGOOD" in text else "+"
        return json.dumps({"analysis_a": "a", "analysis_b": "b", "comparison": "c", "choice": winner + strong})
    if "[[A>>B]]" in text or "<|User Prompt|>" in text:  # ArenaHard
        verdict = {"A": "A>B", "B": "B>A"}[winner]
        return f"My own answer first... My final verdict is [[{verdict}]]"
    raise AssertionError("unknown judge prompt: " + text[:200])


def write_generations(path: Path, ids: list[str], answers: dict[str, str], missing_answer: set[str] = frozenset()) -> Path:
    """A generations.jsonl as the generation stage writes it (answer already extracted)."""
    with path.open("w", encoding="utf-8") as fh:
        for i in ids:
            found = i not in missing_answer
            answer = answers[i] if found else ""
            fh.write(json.dumps({"id": i, "prompt": [], "output": f"<think>\nplan {i}\n</think>\n\n{answer}",
                                 "answer": answer, "thought": f"plan {i}", "answer_found": found,
                                 "well_formed": found, "finish_reason": "stop" if found else "length",
                                 "n_tokens": 10}) + "\n")
    return path


def marked_answers(ids: list[str], good: set[str], garble: set[str] = frozenset()) -> dict[str, str]:
    return {i: f"ZQMODEL {'ZQGOOD' if i in good else 'ZQBAD'}{' ZQGARBLE' if i in garble else ''} answer to {i}." for i in ids}
