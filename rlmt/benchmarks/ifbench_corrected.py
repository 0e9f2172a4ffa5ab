"""IFBench: corrected readings of the instructions whose official checker is plainly wrong.

Off by default: IFBench numbers are comparable with published ones only under the official
checkers (:mod:`rlmt.benchmarks.ifbench_checkers`). ``reading: corrected`` (a benchmark option)
swaps in the checkers below for these ids and leaves every other id official. Each case, what the
official checker does, and the reading here:

* ``format:sub-bullets``: official passes a response with no ``*`` bullet at all and takes any
  ``-`` (a hyphenated word) for a sub-bullet. Here: >= 1 top-level ``*`` bullet, each followed by
  >= 1 ``-`` line.
* ``format:quote_unquote``: official passes a response with no quoted phrase. Here: >= 1 quoted
  phrase, and unquoted text with a word in it after each one.
* ``format:list``: official passes when the separator occurs twice anywhere, usual bullets
  included. Here: >= 2 lines start with it and no other line starts with ``-``, ``*`` or ``•``.
* ``count:keywords_multiple``: official counts substrings ("sun" in "sunny"). Here: whole words.
* ``repeat:repeat_change``: official compares from the second *character* on, so changing a
  letter passes and a new first word of another length fails. Here: the same words but the first.
* ``repeat:repeat_span``: official slices ``[S:E]`` although the instruction includes word E (and
  this version's instruction text says "character indices"). Here: words S..E inclusive.
* ``ratio:sentence_balance`` / ``ratio:sentence_type``: official passes zero of every type.
  Here: at least one sentence of each type counted.
* ``ratio:overlap``: official measures *character* trigrams, as a share of the response's. Here:
  word trigrams, as a share of the reference's.
* ``custom:european_capitals_sort``: official's list omits Kyiv (50.45°N), so a complete answer
  fails. Here: the 28 capitals (Kyiv between Brussels and Prague; "Kiev" accepted).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

from rlmt.benchmarks.ifbench_checkers import EUROPEAN_CAPITALS_BY_LATITUDE, split_into_sentences

CORRECTED: dict[str, Callable[..., bool]] = {}

WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def corrected(instruction_id: str):
    def register(fn):
        CORRECTED[instruction_id] = fn
        return fn
    return register


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def _lines(text: str) -> list[str]:
    return [row for row in text.split("\n") if row.strip()]


@corrected("format:sub-bullets")
def sub_bullets(response: str) -> bool:
    bullets: list[int] = []
    for row in _lines(response):
        if re.match(r"\*\s", row) and not row[:1].isspace():
            bullets.append(0)
        elif re.match(r"-\s", row.lstrip()) and bullets:
            bullets[-1] += 1
    return bool(bullets) and all(n >= 1 for n in bullets)


@corrected("format:quote_unquote")
def quote_unquote(response: str) -> bool:
    parts = response.replace("“", '"').replace("”", '"').split('"')
    if len(parts) < 3 or len(parts) % 2 == 0:
        return False
    return all(re.search(r"\w", after) for after in parts[2::2])


@corrected("format:list")
def special_bullets(response: str, sep: str) -> bool:
    rows = [row.strip() for row in _lines(response)]
    return (sum(1 for row in rows if row.startswith(sep)) >= 2
            and not any(re.match(r"[-*•]\s", row) for row in rows if not row.startswith(sep)))


@corrected("count:keywords_multiple")
def keywords_multiple(response: str, keyword1: str, keyword2: str, keyword3: str, keyword4: str,
                      keyword5: str) -> bool:
    text = response.lower()
    keywords = (keyword1, keyword2, keyword3, keyword4, keyword5)
    return all(len(re.findall(r"\b" + re.escape(k.strip().lower()) + r"\b", text)) == want
               for k, want in zip(keywords, (1, 2, 3, 5, 7)))


@corrected("repeat:repeat_change")
def repeat_change(response: str, prompt_to_repeat: str) -> bool:
    got, want = response.strip().split(), prompt_to_repeat.strip().split()
    return len(got) == len(want) > 0 and got[0].lower() != want[0].lower() and got[1:] == want[1:]


@corrected("repeat:repeat_span")
def repeat_span(response: str, prompt_to_repeat: str, n_start: float, n_end: float) -> bool:
    span = prompt_to_repeat.split()[int(float(n_start)):int(float(n_end)) + 1]
    return response.strip().split() == span


def _ends(response: str) -> dict[str, int]:
    ends = [s[-1:] for s in split_into_sentences(response)]
    return {mark: ends.count(mark) for mark in ".?!"}


@corrected("ratio:sentence_balance")
def sentence_balance(response: str) -> bool:
    ends = _ends(response)
    return ends["."] > 0 and ends["."] == ends["?"] == ends["!"]


@corrected("ratio:sentence_type")
def sentence_type(response: str) -> bool:
    ends = _ends(response)
    return ends["?"] > 0 and ends["."] == 2 * ends["?"]


def _word_trigrams(text: str) -> set[tuple[str, ...]]:
    tokens = [w.lower() for w in words(text)]
    return {tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


@corrected("ratio:overlap")
def overlap(response: str, reference_text: str, percentage: float) -> bool:
    reference = _word_trigrams(reference_text)
    if not reference:
        return False
    share = 100 * len(_word_trigrams(response) & reference) / len(reference)
    return abs(share - float(percentage)) <= 2


CAPITALS_WITH_KYIV = (EUROPEAN_CAPITALS_BY_LATITUDE[:16] + ("Kyiv",) + EUROPEAN_CAPITALS_BY_LATITUDE[16:])


@corrected("custom:european_capitals_sort")
def european_capitals_sort(response: str) -> bool:
    fold = unicodedata.normalize("NFKD", response).encode("ASCII", "ignore").decode("ASCII")
    names = [name.strip().rstrip(".").replace("Kiev", "Kyiv") for name in fold.split(",") if name.strip()]
    return names == list(CAPITALS_WITH_KYIV)
