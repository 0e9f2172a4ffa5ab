"""Checkers for IFBench's new instruction types (57 ids in the 294-prompt test set).

Each checker is ``fn(response, **kwargs) -> bool`` and is registered under its instruction id;
``kwargs`` are the row's non-null kwargs (numbers arrive as floats in the data and are cast).
Instructions that are not written here are *unscorable* (see :mod:`rlmt.benchmarks.ifbench`).

The checkers are written from the instruction texts in the data (quoted in each docstring), not
copied from the IFBench repository; where an instruction is open to reading, the docstring says
which reading is implemented. Text is cut into words, sentences and paragraphs by the small
tokenisers below (no nltk data needed), so every checker runs offline.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import string
import unicodedata
from typing import Callable

Checker = Callable[..., bool]
CHECKERS: dict[str, Checker] = {}


class CheckerDataMissing(LookupError):
    """A checker needs data that is not installed (an nltk resource)."""


def checker(instruction_id: str) -> Callable[[Checker], Checker]:
    def register(fn: Checker) -> Checker:
        CHECKERS[instruction_id] = fn
        return fn
    return register


# ---------------------------------------------------------------------- tokenisers

WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")
SENTENCE_END_RE = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n+")


def words(text: str) -> list[str]:
    """Words: runs of letters/digits, with inner apostrophes and hyphens kept."""
    return WORD_RE.findall(text)


def sentences(text: str) -> list[str]:
    """Sentences: split after ``.``, ``!``, ``?`` followed by whitespace, and at line breaks."""
    return [s.strip() for s in SENTENCE_END_RE.split(text.strip()) if s and s.strip()]


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n|\n", text.strip()) if p.strip()]


def lines(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.strip()]


def _n(value: float | int | str) -> int:
    return int(float(value))


# ---------------------------------------------------------------------- count:*

COORDINATING_CONJUNCTIONS = ("for", "and", "nor", "but", "or", "yet", "so")
PRONOUNS = frozenset("""i me my mine myself you your yours yourself yourselves he him his himself she her hers
herself it its itself we us our ours ourselves they them their theirs themselves who whom whose which what
that this these those anyone anybody anything everyone everybody everything someone somebody something no-one
nobody nothing one oneself each either neither another other others whoever whatever whichever all both few
many several some any none""".split())
PERSON_NAMES = ("Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander "
                "Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella "
                "Jacob Scarlett Nathan Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope "
                "Thomas Nora Andrew Aria Joseph Claire Ryan Stella Jonathan").split()


@checker("count:conjunctions")
def use_conjunctions(response: str, small_n: float) -> bool:
    """"Use at least N different coordinating conjunctions in the response." (FANBOYS)"""
    used = {w.lower() for w in words(response)} & set(COORDINATING_CONJUNCTIONS)
    return len(used) >= _n(small_n)


@checker("count:keywords_multiple")
def keywords_multiple(response: str, keyword1: str, keyword2: str, keyword3: str, keyword4: str,
                      keyword5: str) -> bool:
    """"Include keyword k1 once, k2 twice, k3 three times, k4 five times, and k5 seven times" (exactly)."""
    counts = [1, 2, 3, 5, 7]
    text = response.lower()
    for keyword, want in zip((keyword1, keyword2, keyword3, keyword4, keyword5), counts):
        if len(re.findall(r"\b" + re.escape(keyword.lower()) + r"\b", text)) != want:
            return False
    return True


@checker("count:numbers")
def exact_numbers(response: str, N: float) -> bool:
    """"Include exactly N numbers in the response." (digit numbers, 1,000 and 3.5 count once)"""
    return len(re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*", response)) == _n(N)


@checker("count:person_names")
def person_names(response: str, N: float) -> bool:
    """"Mention at least N different person names in the response, from this list: Emma, Liam, ..." """
    found = {name for name in PERSON_NAMES if re.search(r"\b" + name + r"\b", response)}
    return len(found) >= _n(N)


@checker("count:pronouns")
def pronouns(response: str, N: float) -> bool:
    """"The response should include at least N pronouns." (personal, possessive, reflexive,
    demonstrative, relative/interrogative and indefinite pronouns; every occurrence counts)"""
    return sum(1 for w in words(response) if w.lower() in PRONOUNS) >= _n(N)


@checker("count:punctuation")
def every_punctuation(response: str) -> bool:
    """"Use every standard punctuation mark at least once, including semicolons, colons, and the
    interrobang (?!)." Standard marks: . , ? ! ; : - ' " ( ) plus the interrobang "?!" or "‽"."""
    marks = [".", ",", "?", "!", ";", ":", "-", "'", '"', "(", ")"]
    normalised = response.replace("“", '"').replace("”", '"').replace("’", "'").replace("‘", "'")
    return all(m in normalised for m in marks) and ("?!" in response or "‽" in response)


@checker("count:unique_word_count")
def unique_words(response: str, N: float) -> bool:
    """"Use at least N unique words in the response." (case-insensitive)"""
    return len({w.lower() for w in words(response)}) >= _n(N)


@checker("count:word_count_range")
def word_count_range(response: str, min_words: float, max_words: float) -> bool:
    """"The response must contain between MIN and MAX words." (inclusive)"""
    return _n(min_words) <= len(words(response)) <= _n(max_words)


def _is_japanese(word: str) -> bool:
    return any(0x3040 <= ord(c) <= 0x30FF or 0x4E00 <= ord(c) <= 0x9FFF or 0x3400 <= ord(c) <= 0x4DBF for c in word)


@checker("count:words_japanese")
def every_nth_japanese(response: str, N: float) -> bool:
    """"Every Nth word of your response must be in Japanese." Words are whitespace-separated tokens
    (Japanese is not space-delimited); words N, 2N, ... hold Japanese script; there is at least one."""
    n = _n(N)
    tokens = response.split()
    positions = range(n - 1, len(tokens), n)
    return len(positions) > 0 and all(_is_japanese(tokens[i]) for i in positions)


# ---------------------------------------------------------------------- custom:*


def _csv_rows(response: str, delimiter: str) -> list[list[str]]:
    text = response.strip()
    fenced = re.search(r"```(?:\w+)?\n(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    return [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]


def _csv_data_lines(response: str) -> list[str]:
    text = response.strip()
    fenced = re.search(r"```(?:\w+)?\n(.*?)```", text, re.DOTALL)
    return lines(fenced.group(1) if fenced else text)


@checker("custom:csv_city")
def csv_city(response: str) -> bool:
    """"Generate CSV data: The column names are ["ID", "Country", "City", "Year", "Count"], the data
    should be comma delimited. Please generate 7 rows." (header + 7 rows of 5 fields)"""
    rows = _csv_rows(response, ",")
    header = ["ID", "Country", "City", "Year", "Count"]
    return (len(rows) == 8 and [c.strip() for c in rows[0]] == header
            and all(len(r) == 5 and all(c.strip() for c in r) for r in rows[1:]))


@checker("custom:csv_quotes")
def csv_quotes(response: str) -> bool:
    """"... the data should be tab delimited. Please generate 3 rows and enclose each single field in
    double quotes." (header StudentID/Subject/Grade/Semester/Score + 3 rows; every raw field quoted)"""
    raw = _csv_data_lines(response)
    if len(raw) != 4:
        return False
    for line in raw:
        fields = line.strip().split("\t")
        if len(fields) != 5 or not all(re.fullmatch(r'"[^"]*"', f.strip()) for f in fields):
            return False
    header = [f.strip().strip('"') for f in raw[0].split("\t")]
    return header == ["StudentID", "Subject", "Grade", "Semester", "Score"]


@checker("custom:csv_special_character")
def csv_special_character(response: str) -> bool:
    """"... comma delimited. Please generate 14 rows. Add one field which contains a special
    character and enclose it in double quotes." (header + 14 rows of 5 fields; some data field
    holds a non-alphanumeric, non-space character and is double-quoted in the raw text)"""
    rows = _csv_rows(response, ",")
    header = ["ProductID", "Category", "Brand", "Price", "Stock"]
    if len(rows) != 15 or [c.strip() for c in rows[0]] != header or any(len(r) != 5 for r in rows[1:]):
        return False
    quoted = re.findall(r'"([^"]*)"', "\n".join(_csv_data_lines(response)[1:]))
    return any(re.search(r"[^\w\s.]", field) for field in quoted)


@checker("custom:date_format_list")
def date_format_list(response: str) -> bool:
    """"List the start dates of all the battles Napoleon fought separated by commas, use the
    following date format: YYYY-MM-DD. Do not provide an explanation." (the whole response is a
    comma-separated list of real dates, at least two, within Napoleon's career 1785-1815)"""
    items = [x.strip() for x in response.strip().rstrip(".").split(",")]
    if len(items) < 2:
        return False
    for item in items:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", item):
            return False
        try:
            date = dt.date.fromisoformat(item)
        except ValueError:
            return False
        if not 1785 <= date.year <= 1815:
            return False
    return True


# Capitals of European countries north of 45° latitude (degrees north, rounded to 0.1).
EUROPEAN_CAPITALS_NORTH_OF_45 = {
    "reykjavik": 64.1, "helsinki": 60.2, "oslo": 59.9, "tallinn": 59.4, "stockholm": 59.3, "riga": 56.9,
    "moscow": 55.8, "copenhagen": 55.7, "vilnius": 54.7, "minsk": 53.9, "dublin": 53.3, "berlin": 52.5,
    "amsterdam": 52.4, "warsaw": 52.2, "london": 51.5, "brussels": 50.8, "kyiv": 50.5, "kiev": 50.5,
    "prague": 50.1, "luxembourg": 49.6, "paris": 48.9, "vienna": 48.2, "bratislava": 48.1,
    "budapest": 47.5, "vaduz": 47.1, "chisinau": 47.0, "bern": 46.9, "ljubljana": 46.1, "zagreb": 45.8,
}


def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().strip()


@checker("custom:european_capitals_sort")
def european_capitals_sort(response: str) -> bool:
    """"Give me the names of all capital cities of european countries whose latitude is higher than
    45 degrees? List the capital cities without country names, separated by commas, sorted by
    latitude, from highest to lowest." Every listed name must be such a capital (no country names),
    the list must be ordered by latitude (non-increasing) and hold at least 20 of the 28."""
    names = [_ascii_fold(x).rstrip(".") for x in response.strip().split(",")]
    if not all(n in EUROPEAN_CAPITALS_NORTH_OF_45 for n in names):
        return False
    lats = [EUROPEAN_CAPITALS_NORTH_OF_45[n] for n in names]
    return len(set(names)) >= 20 and all(a >= b for a, b in zip(lats, lats[1:]))


@checker("custom:mcq_count_length")
def mcq_count_length(response: str) -> bool:
    """"Generate 4 multiple choice questions with 5 options each ... Each question should start with
    the label "Question". The questions should get progressively longer." (4 blocks starting with
    "Question"; each with 5 option lines labelled A-E; question lines strictly longer each time)"""
    blocks = re.split(r"(?m)^\s*(?=\**Question)", response.strip())
    blocks = [b for b in blocks if b.strip().lstrip("*").startswith("Question")]
    if len(blocks) != 4:
        return False
    lengths = []
    for block in blocks:
        block_lines = lines(block)
        options = [ln for ln in block_lines[1:] if re.match(r"\s*\(?[A-Ea-e][).:]\s", ln)]
        if len(options) != 5:
            return False
        lengths.append(len(block_lines[0].strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:]))


@checker("custom:multiples")
def multiples_of_seven(response: str) -> bool:
    """"Count from 10 to 50 but only print multiples of 7." (exactly 14, 21, 28, 35, 42, 49, in order)"""
    return [int(x) for x in re.findall(r"\d+", response)] == [14, 21, 28, 35, 42, 49]


AFRICAN_COUNTRIES = {
    "algeria", "angola", "benin", "botswana", "burkina faso", "burundi", "cabo verde", "cape verde",
    "cameroon", "central african republic", "chad", "comoros", "congo", "republic of the congo",
    "democratic republic of the congo", "dr congo", "drc", "djibouti", "egypt", "equatorial guinea",
    "eritrea", "eswatini", "swaziland", "ethiopia", "gabon", "gambia", "the gambia", "ghana", "guinea",
    "guinea-bissau", "ivory coast", "cote d'ivoire", "kenya", "lesotho", "liberia", "libya",
    "madagascar", "malawi", "mali", "mauritania", "mauritius", "morocco", "mozambique", "namibia",
    "niger", "nigeria", "rwanda", "sao tome and principe", "senegal", "seychelles", "sierra leone",
    "somalia", "south africa", "south sudan", "sudan", "tanzania", "togo", "tunisia", "uganda",
    "zambia", "zimbabwe", "congo (brazzaville)", "congo (kinshasa)", "congo, democratic republic of the",
    "congo, republic of the",
}


@checker("custom:reverse_newline")
def reverse_newline(response: str) -> bool:
    """"List the countries of Africa in reverse alphabetical order, each on a new line." (one
    country per line, list markers allowed; at least 50 known country names; Z to A order)"""
    names = [_ascii_fold(re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln)).rstrip(".") for ln in lines(response)]
    if len(names) < 50 or not all(n in AFRICAN_COUNTRIES for n in names):
        return False
    return all(a >= b for a, b in zip(names, names[1:]))


@checker("custom:sentence_alphabet")
def sentence_alphabet(response: str) -> bool:
    """"Tell me a 26-sentence story where each sentence's first word starts with the letters of the
    alphabet in order." """
    sents = sentences(response)
    if len(sents) != 26:
        return False
    for letter, sentence in zip(string.ascii_uppercase, sents):
        first = words(sentence)
        if not first or first[0][0].upper() != letter:
            return False
    return True


@checker("custom:word_reverse")
def word_reverse(response: str) -> bool:
    """"What animal is the national symbol of the US? Respond to this query, but make your sentence
    in reverse order of what it should be, per word." (read backwards, the words say "bald eagle";
    read forwards they do not)"""
    tokens = [w.lower() for w in words(response)]
    backwards = " ".join(reversed(tokens))
    return "bald eagle" in backwards and "bald eagle" not in " ".join(tokens)


# ---------------------------------------------------------------------- format:*


def _is_emoji(char: str) -> bool:
    code = ord(char)
    return (0x1F300 <= code <= 0x1FAFF or 0x2600 <= code <= 0x27BF or 0x1F000 <= code <= 0x1F2FF
            or 0x2B00 <= code <= 0x2BFF or 0x1F900 <= code <= 0x1F9FF)


def _strip_emoji_tail(text: str) -> tuple[str, bool]:
    """Text without its trailing emoji (and variation selectors/joiners); whether there was one."""
    had = False
    text = text.rstrip()
    while text and (_is_emoji(text[-1]) or text[-1] in "\ufe0f\u200d" or 0x1F3FB <= ord(text[-1]) <= 0x1F3FF):
        had = had or _is_emoji(text[-1])
        text = text[:-1].rstrip()
    return text, had


@checker("format:emoji")
def emoji_every_sentence(response: str) -> bool:
    """"Please use an emoji at the end of every sentence." A sentence ends at . ! ? (or a line end);
    an emoji must come right before or right after its end mark."""
    chunks = [c for c in re.split(r"(?<=[.!?])(?=\s)|\n", response.strip()) if c.strip()]
    # an emoji written after the period starts the next chunk: move it back to its sentence
    fixed: list[str] = []
    for chunk in chunks:
        stripped = chunk.strip()
        lead = ""
        while stripped and (_is_emoji(stripped[0]) or stripped[0] in "\ufe0f\u200d"):
            lead += stripped[0]
            stripped = stripped[1:].lstrip()
        if lead and fixed:
            fixed[-1] += lead
        if stripped:
            fixed.append(stripped)
        elif lead and not fixed:
            fixed.append(lead)
    if not fixed:
        return False
    return all(_strip_emoji_tail(sentence)[1] or _strip_emoji_tail(sentence.rstrip(".!? "))[1]
               for sentence in fixed)


@checker("format:line_indent")
def staircase_indent(response: str) -> bool:
    """"Create stairs by incrementally indenting each new line." (each non-empty line is indented
    strictly more than the one before; at least two lines)"""
    rows = lines(response)
    indents = [len(r) - len(r.lstrip(" \t")) for r in rows]
    return len(rows) >= 2 and all(a < b for a, b in zip(indents, indents[1:]))


@checker("format:list")
def custom_bullets(response: str, sep: str) -> bool:
    """"Answer with a list of items, instead of bullet points use SEP." (at least two lines start
    with SEP and none with the usual bullet markers)"""
    rows = [r.strip() for r in lines(response)]
    return (sum(1 for r in rows if r.startswith(sep)) >= 2
            and not any(re.match(r"[-*•]\s", r) for r in rows if not r.startswith(sep)))


@checker("format:newline")
def word_per_line(response: str) -> bool:
    """"Write each word on a new line." (every non-empty line holds exactly one word)"""
    rows = lines(response)
    return len(rows) >= 2 and all(len(words(r)) == 1 and len(r.split()) == 1 for r in rows)


@checker("format:no_bullets_bullets")
def sentences_then_bullets(response: str) -> bool:
    """"Your answer must contain at least two sentences ending in a period followed by at least two
    bullet points denoted by *." """
    rows = response.strip().split("\n")
    first_bullet = next((i for i, r in enumerate(rows) if re.match(r"\s*\*\s", r)), None)
    if first_bullet is None:
        return False
    before = "\n".join(rows[:first_bullet])
    bullets = [r for r in rows[first_bullet:] if re.match(r"\s*\*\s", r)]
    return len(re.findall(r"\w[^.!?\n]*\.(?=\s|$)", before)) >= 2 and len(bullets) >= 2


@checker("format:no_whitespace")
def no_whitespace(response: str) -> bool:
    """"The output should not contain any whitespace." """
    return bool(response) and not re.search(r"\s", response)


@checker("format:options")
def one_of_options(response: str, options: str) -> bool:
    """"Answer with one of the following options: yes/no/maybe." (the whole answer is one option;
    case and a final period are ignored)"""
    allowed = {o.strip().lower() for o in re.split(r"/|,|\bor\b", options) if o.strip()}
    return response.strip().strip(".!*\"'").strip().lower() in allowed


@checker("format:output_template")
def output_template(response: str) -> bool:
    """"Use this exact template for your response: My Answer: [answer] My Conclusion: [conclusion]
    Future Outlook: [outlook]" (the three labels, in order, each followed by text, nothing before)"""
    match = re.fullmatch(r"\s*My Answer:(.+?)My Conclusion:(.+?)Future Outlook:(.+)", response, re.DOTALL)
    return bool(match) and all(part.strip() for part in match.groups())


@checker("format:parentheses")
def nested_brackets(response: str) -> bool:
    """"Nest parentheses (and [brackets {and braces}]) at least 5 levels deep." (balanced brackets of
    any of the three kinds reach depth 5)"""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    deepest = 0
    for char in response:
        if char in "([{":
            stack.append(char)
            deepest = max(deepest, len(stack))
        elif char in pairs:
            if not stack or stack[-1] != pairs[char]:
                return False
            stack.pop()
    return not stack and deepest >= 5


@checker("format:quote_unquote")
def quotes_explained(response: str) -> bool:
    """"Every quoted phrase must be followed by an unquoted explanation." (after each "..." comes
    some unquoted text with a word in it before the next quote or the end)"""
    text = response.replace("“", '"').replace("”", '"')
    parts = text.split('"')
    if len(parts) < 3 or len(parts) % 2 == 0:
        return False
    outside_after = parts[2::2]  # text after each closing quote
    return all(re.search(r"\w", chunk) for chunk in outside_after)


@checker("format:quotes")
def nested_quotes(response: str) -> bool:
    """"Include quotes within quotes within quotes, at least 3 levels deep, alternating between
    double quotes and single quotes." (apostrophes inside words are not quotes)"""
    stack: list[str] = []
    deepest = 0
    text = response.replace("“", '"').replace("”", '"').replace("‘", "'").replace("’", "'")
    for i, char in enumerate(text):
        if char == "'" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum():
            continue  # apostrophe
        if char not in "\"'":
            continue
        if stack and stack[-1] == char:
            stack.pop()
        else:
            stack.append(char)
            deepest = max(deepest, len(stack))
    return deepest >= 3


@checker("format:sub-bullets")
def sub_bullets(response: str) -> bool:
    """"Your response must include bullet points denoted by * and at least one sub-bullet point
    denoted by - for each bullet point." """
    bullets: list[int] = []
    for row in lines(response):
        if re.match(r"\*\s", row.lstrip()) and len(row) - len(row.lstrip()) == 0:
            bullets.append(0)
        elif re.match(r"-\s", row.lstrip()) and bullets:
            bullets[-1] += 1
    return bool(bullets) and all(n >= 1 for n in bullets)


@checker("format:thesis")
def thesis_in_italics(response: str) -> bool:
    """"Each section must begin with a thesis statement in italics, use HTML to indicate the
    italics." (sections are blank-line separated; each starts with <i>...</i> or <em>...</em>)"""
    sections = [s.strip() for s in re.split(r"\n\s*\n", response.strip()) if s.strip()]
    return bool(sections) and all(re.match(r"(?:<p>\s*)?<(i|em)>.+?</\1>", s, re.DOTALL) for s in sections)


MINOR_WORDS = frozenset("a an the and but or nor for so yet as at by in of off on per to up via with from into onto "
                        "over than vs".split())


@checker("format:title_case")
def title_case(response: str) -> bool:
    """"Write the entire response in title case (capitalize the first letter of every major word)."
    (every word that is not a short article/conjunction/preposition starts with a capital or a digit;
    minor words may be either; the first word of each line is major)"""
    for row in lines(response):
        for index, word in enumerate(words(row)):
            if word[0].isdigit() or word[0].isupper():
                continue
            if index > 0 and word.lower() in MINOR_WORDS:
                continue
            return False
    return bool(words(response))


# ---------------------------------------------------------------------- ratio:*


def _trigrams(text: str) -> set[tuple[str, ...]]:
    tokens = [w.lower() for w in words(text)]
    return {tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)}


@checker("ratio:overlap")
def trigram_overlap(response: str, percentage: float, reference_text: str) -> bool:
    """"Maintain a trigram overlap of P% (±2%) with the provided reference text." (shared word
    trigrams / reference trigrams, within P±2)"""
    reference = _trigrams(reference_text)
    if not reference:
        return False
    overlap = 100 * len(_trigrams(response) & reference) / len(reference)
    return abs(overlap - float(percentage)) <= 2


def _sentence_types(response: str) -> dict[str, int]:
    counts = {"declarative": 0, "interrogative": 0, "exclamatory": 0}
    for sentence in sentences(response):
        end = sentence.rstrip("\"'”’)] ")[-1:]
        if end == "?":
            counts["interrogative"] += 1
        elif end == "!":
            counts["exclamatory"] += 1
        else:
            counts["declarative"] += 1
    return counts


@checker("ratio:sentence_balance")
def sentence_balance(response: str) -> bool:
    """"Ensure that the ratio of sentence types (declarative, interrogative, exclamatory) in your
    response is balanced." (equal numbers of each, at least one of each)"""
    counts = _sentence_types(response)
    return counts["declarative"] > 0 and len(set(counts.values())) == 1


@checker("ratio:sentence_type")
def declarative_interrogative_2_to_1(response: str) -> bool:
    """"Maintain a 2:1 ratio of declarative to interrogative sentences in your response." """
    counts = _sentence_types(response)
    return counts["interrogative"] > 0 and counts["declarative"] == 2 * counts["interrogative"]


@checker("ratio:sentence_words")
def three_equal_sentences(response: str) -> bool:
    """"Respond with three sentences, all containing the same number of characters but using all
    different words." (exactly three sentences of equal length; no word shared between two of them)"""
    sents = sentences(response)
    if len(sents) != 3 or len({len(s) for s in sents}) != 1:
        return False
    vocab = [{w.lower() for w in words(s)} for s in sents]
    return not (vocab[0] & vocab[1] or vocab[0] & vocab[2] or vocab[1] & vocab[2])


STOP_WORDS = frozenset("""a about above after again against all am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
now of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves""".split())


@checker("ratio:stop_words")
def stop_word_share(response: str, percentage: float) -> bool:
    """"Ensure that stop words constitute no more than P% of the total words in your response." """
    tokens = [w.lower() for w in words(response)]
    return bool(tokens) and 100 * sum(t in STOP_WORDS for t in tokens) / len(tokens) <= float(percentage)


# ---------------------------------------------------------------------- repeat:*


def _norm_words(text: str) -> list[str]:
    return text.strip().split()


@checker("repeat:repeat_change")
def repeat_with_new_first_word(response: str, prompt_to_repeat: str) -> bool:
    """"Repeat the request, but change the first word of the repeated request ... and do not answer
    the actual request!" (same words except a different first word, nothing else)"""
    got, want = _norm_words(response), _norm_words(prompt_to_repeat)
    return len(got) == len(want) and got[0].lower() != want[0].lower() and got[1:] == want[1:]


@checker("repeat:repeat_simple")
def repeat_only_sentence(response: str) -> bool:
    """"Only output this sentence here, ignore all other requests." (the response is that sentence)"""
    return response.strip() == "Only output this sentence here, ignore all other requests."


@checker("repeat:repeat_span")
def repeat_span(response: str, prompt_to_repeat: str, n_start: float, n_end: float) -> bool:
    """"Copy the span of words that lies between (and including) index S and E, the indices are word
    indices, split by whitespace!" (0-based, inclusive)"""
    span = prompt_to_repeat.split()[_n(n_start):_n(n_end) + 1]
    return response.strip().split() == span


# ---------------------------------------------------------------------- sentence:*


def _longest_alliteration(sentence: str) -> int:
    initials = [w[0].lower() for w in words(sentence)]
    best = run = 0
    for i, c in enumerate(initials):
        run = run + 1 if i > 0 and c == initials[i - 1] else 1
        best = max(best, run)
    return best


@checker("sentence:alliteration_increment")
def alliteration_increment(response: str) -> bool:
    """"Each sentence must have a longer sequence of consecutive alliterative words than the
    previous one." (longest run of words sharing a first letter grows strictly; >= 2 sentences)"""
    runs = [_longest_alliteration(s) for s in sentences(response)]
    return len(runs) >= 2 and all(a < b for a, b in zip(runs, runs[1:]))


@checker("sentence:increment")
def words_increment(response: str, small_n: float) -> bool:
    """"Each sentence in your response must contain exactly N more words than the previous one." """
    counts = [len(words(s)) for s in sentences(response)]
    return len(counts) >= 2 and all(b - a == _n(small_n) for a, b in zip(counts, counts[1:]))


@checker("sentence:keyword")
def keyword_in_nth_sentence(response: str, word: str, N: float) -> bool:
    """"The response must include keyword W in the N-th sentence." """
    sents = sentences(response)
    n = _n(N)
    return len(sents) >= n and word.lower() in {w.lower() for w in words(sents[n - 1])}


# ---------------------------------------------------------------------- words:*


@checker("words:alphabet")
def alphabet_chain(response: str) -> bool:
    """"Each word in your response must start with the next letter of the alphabet, looping back to
    'A' after 'Z'." (the first word may start anywhere)"""
    initials = [w[0].lower() for w in words(response)]
    if len(initials) < 2 or not all(c in string.ascii_lowercase for c in initials):
        return False
    return all((ord(b) - ord("a")) == (ord(a) - ord("a") + 1) % 26 for a, b in zip(initials, initials[1:]))


VOWELS = set("aeiou")


@checker("words:consonants")
def consonant_clusters(response: str) -> bool:
    """"Ensure each word in your response has at least one consonant cluster (two or more consonants
    together)." (letters other than a e i o u; y counts as a consonant)"""
    tokens = [w.lower() for w in words(response) if any(c.isalpha() for c in w)]
    return bool(tokens) and all(re.search(r"[b-df-hj-np-tv-z]{2}", t) for t in tokens)


@checker("words:keywords_specific_position")
def keyword_at_position(response: str, keyword: str, n: float, m: float) -> bool:
    """"Include keyword K in the n-th sentence, as the m-th word of that sentence." """
    sents = sentences(response)
    if len(sents) < _n(n):
        return False
    tokens = words(sents[_n(n) - 1])
    return len(tokens) >= _n(m) and tokens[_n(m) - 1].lower() == keyword.lower()


@checker("words:last_first")
def last_word_first_next(response: str) -> bool:
    """"The last word of each sentence must become the first word of the next sentence." """
    sents = [words(s) for s in sentences(response)]
    sents = [s for s in sents if s]
    return len(sents) >= 2 and all(a[-1].lower() == b[0].lower() for a, b in zip(sents, sents[1:]))


@checker("words:no_consecutive")
def no_consecutive_initials(response: str) -> bool:
    """"No two consecutive words can share the same first letter." """
    initials = [w[0].lower() for w in words(response)]
    return bool(initials) and all(a != b for a, b in zip(initials, initials[1:]))


def syllables(word: str) -> int:
    """English syllable estimate: vowel groups, minus a silent final e, at least one."""
    word = word.lower()
    groups = re.findall(r"[aeiouy]+", word)
    count = len(groups)
    if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and count > 1:
        count -= 1
    return max(count, 1)


@checker("words:odd_even_syllables")
def alternating_syllable_parity(response: str) -> bool:
    """"Alternate between words with odd and even numbers of syllables." (syllables estimated)"""
    parities = [syllables(w) % 2 for w in words(response) if any(c.isalpha() for c in w)]
    return len(parities) >= 2 and all(a != b for a, b in zip(parities, parities[1:]))


@checker("words:palindrome")
def palindromes(response: str) -> bool:
    """"Include at least 10 single-word palindromes, each at least 5 characters long." (distinct)"""
    found = {w.lower() for w in words(response) if len(w) >= 5 and w.lower() == w.lower()[::-1]}
    return len(found) >= 10


@checker("words:paragraph_last_first")
def paragraph_ends_with_first_word(response: str) -> bool:
    """"Each paragraph of your response must end with the same word it started with, separate
    paragraphs with a newline." """
    paras = [words(p) for p in paragraphs(response)]
    return bool(paras) and all(p and p[0].lower() == p[-1].lower() for p in paras)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


@checker("words:prime_lengths")
def prime_lengths(response: str) -> bool:
    """"Use only words with lengths that are prime numbers." (letters counted; numbers skipped)"""
    tokens = [re.sub(r"[^A-Za-z]", "", w) for w in words(response)]
    tokens = [t for t in tokens if t]
    return bool(tokens) and all(_is_prime(len(t)) for t in tokens)


@checker("words:repeats")
def no_word_repeated(response: str, small_n: float) -> bool:
    """"Do not repeat any word more than N times." (case-insensitive)"""
    counts: dict[str, int] = {}
    for w in words(response):
        counts[w.lower()] = counts.get(w.lower(), 0) + 1
    return bool(counts) and max(counts.values()) <= _n(small_n)


@checker("words:start_verb")
def starts_with_verb(response: str) -> bool:
    """"The response must start with a verb." (nltk's perceptron tagger tags the first sentence's
    first word VB*; needs nltk data ``averaged_perceptron_tagger_eng``, fetched by
    ``rlmt data fetch-benchmarks``; without it the instruction is unscorable)"""
    import nltk

    tokens = words(response)
    if not tokens:
        return False
    try:
        tagged = nltk.pos_tag(tokens[:12])
    except LookupError as err:
        raise CheckerDataMissing("averaged_perceptron_tagger_eng") from err
    return tagged[0][1].startswith("VB")


@checker("words:vowel")
def three_vowel_types(response: str) -> bool:
    """"Write a paragraph using words that contain only three types of vowels." (the response uses
    at most three distinct vowels of a e i o u, and at least one)"""
    used = {c for c in response.lower() if c in VOWELS}
    return 1 <= len(used) <= 3


@checker("words:words_position")
def second_and_second_last(response: str, keyword: str) -> bool:
    """"The second word in your response and the second to last word in your response should be the
    word K." """
    tokens = [w.lower() for w in words(response)]
    return len(tokens) >= 3 and tokens[1] == keyword.lower() and tokens[-2] == keyword.lower()
