"""IFBench's 57 instruction checkers, with the official semantics of the version our data comes from.

Version: allenai/IFBench at commit ``d793cb6`` (2025-09-11). The 294-prompt test file in our data
is byte-for-byte the one that commit ships (it is unchanged from the first release ``8a66c06``,
2025-07-02, whose checkers differ from ``d793cb6`` only in one crash fix in ``format:emoji``); it
is also the code that was current when the RLMT paper reported its IFBench numbers. Later commits
changed the data (300 prompts) and several checkers (``repeat:repeat_change``, ``count:pronouns``,
``repeat:repeat_span`` in character units, nltk tokenisers), so their numbers are not comparable
with these. ``tests/fixtures/official/ifbench/`` holds that commit's own verdicts on a few thousand
responses (``build_ifbench.py`` rebuilds them) and ``tests/test_official_parity.py`` checks that
every checker here gives the same verdict.

Each checker is ``fn(response, **kwargs) -> bool`` registered under its instruction id; kwargs are
the row's non-null kwargs (IFBench rows carry every kwarg name; the official evaluation drops the
nulls). The semantics are the official ones, including their surprises (each is described where it
matters: substring matching, raw tokens kept with their punctuation, a vacuous pass on empty input);
where one is plainly wrong for the instruction's wording, :mod:`rlmt.benchmarks.ifbench_corrected`
offers the corrected reading as an option (``reading: corrected``); the list of such ids is there.

Differences from the official code, each deliberate:

* where the official checker *raises* (an ``IndexError`` on a sentence that is only punctuation, a
  ``ZeroDivisionError`` on a response without words), the official run crashes; here the
  instruction fails (it is not followed);
* ``repeat:repeat_span`` with ``n_start`` 0: the official code treats 0 as "not given" and draws a
  random start (``if not n_start``), so its verdict changes from run to run; here the start is 0;
* nltk data (``punkt_tab`` for ``nltk.word_tokenize``, the ``stopwords`` corpus, the
  ``averaged_perceptron_tagger_eng`` tagger) is never downloaded at scoring time: ``rlmt data
  fetch-benchmarks`` puts it under ``<data_dir>/nltk_data``; without it the checkers that need it
  (``words:keywords_specific_position``, ``words:words_position``, ``format:title_case``,
  ``ratio:stop_words``, ``words:start_verb``) raise :class:`CheckerDataMissing` and the instruction
  is *unscorable* (counted, left out of the denominators), never passed or failed silently.
"""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata
from collections import Counter
from typing import Callable

Checker = Callable[..., bool]
CHECKERS: dict[str, Checker] = {}

PUNCTUATION = string.punctuation
_STRIP = PUNCTUATION + " "
_NO_PUNCTUATION = str.maketrans("", "", PUNCTUATION)


class CheckerDataMissing(LookupError):
    """A checker needs data that is not installed (an nltk resource)."""


def checker(instruction_id: str) -> Callable[[Checker], Checker]:
    def register(fn: Checker) -> Checker:
        CHECKERS[instruction_id] = fn
        return fn
    return register


# ---------------------------------------------------------------------- the official text units


def drop_punctuation(text: str) -> str:
    return text.translate(_NO_PUNCTUATION)


def count_words(text: str) -> int:
    """Words as the official ``count_words``: ``\\w+`` runs (nltk's RegexpTokenizer)."""
    return len(re.findall(r"\w+", text))


_ABBREVIATED_PREFIX = re.compile(r"(Mr|St|Mrs|Ms|Dr)[.]")
_WEBSITE = re.compile(r"[.](com|net|org|io|gov|edu|me)")
_DECIMAL = re.compile(r"([0-9])[.]([0-9])")
_DOT_RUN = re.compile(r"\.{2,}")
_LONE_INITIAL = re.compile(r"\s([A-Za-z])[.] ")
_STARTER = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)"
_ACRONYM_THEN_STARTER = re.compile(r"([A-Z][.][A-Z][.](?:[A-Z][.])?) " + _STARTER)
_THREE_INITIALS = re.compile(r"([A-Za-z])[.]([A-Za-z])[.]([A-Za-z])[.]")
_TWO_INITIALS = re.compile(r"([A-Za-z])[.]([A-Za-z])[.]")
_SUFFIX_THEN_STARTER = re.compile(r" (Inc|Ltd|Jr|Sr|Co)[.] " + _STARTER)
_SUFFIX = re.compile(r" (Inc|Ltd|Jr|Sr|Co)[.]")
_SPACE_INITIAL = re.compile(r" ([A-Za-z])[.]")


def split_into_sentences(text: str) -> list[str]:
    """The official (IFEval-lineage) sentence splitter: rule-based, no nltk data.

    Dots that do not end a sentence (titles, decimals, initials, web suffixes) are protected,
    closing quotes move before the end mark, then the text splits after every ``.``, ``?``, ``!``.
    Line breaks are spaces to it. The rules are applied in the official order, which matters.
    """
    text = " " + text + "  "
    text = text.replace("\n", " ")
    text = _ABBREVIATED_PREFIX.sub(r"\1<prd>", text)
    text = _WEBSITE.sub(r"<prd>\1", text)
    text = _DECIMAL.sub(r"\1<prd>\2", text)
    text = _DOT_RUN.sub(lambda m: "<prd>" * len(m.group(0)) + "<stop>", text)
    if "Ph.D" in text:
        text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = _LONE_INITIAL.sub(r" \1<prd> ", text)
    text = _ACRONYM_THEN_STARTER.sub(r"\1<stop> \2", text)
    text = _THREE_INITIALS.sub(r"\1<prd>\2<prd>\3<prd>", text)
    text = _TWO_INITIALS.sub(r"\1<prd>\2<prd>", text)
    text = _SUFFIX_THEN_STARTER.sub(r" \1<stop> \2", text)
    text = _SUFFIX.sub(r" \1<prd>", text)
    text = _SPACE_INITIAL.sub(r" \1<prd>", text)
    for before, after in ((".”", "”."), ('."', '".'), ('!"', '"!'), ('?"', '"?')):
        text = text.replace(before, after)
    for mark in ".?!":
        text = text.replace(mark, mark + "<stop>")
    text = text.replace("<prd>", ".")
    parts = [part.strip() for part in text.split("<stop>")]
    if parts and not parts[-1]:
        parts.pop()
    return parts


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize`` (needs nltk's ``punkt_tab``)."""
    import nltk

    try:
        return nltk.word_tokenize(text)
    except LookupError as err:
        raise CheckerDataMissing("punkt_tab") from err


def english_stopwords() -> frozenset[str]:
    """nltk's English stop-word list (needs nltk's ``stopwords`` corpus)."""
    import nltk

    try:
        return frozenset(nltk.corpus.stopwords.words("english"))
    except LookupError as err:
        raise CheckerDataMissing("stopwords") from err


def _n(value: float | int | str) -> int:
    return int(float(value))


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ASCII", "ignore").decode("ASCII")


# ---------------------------------------------------------------------- count:*


CONJUNCTIONS = ("and", "but", "for", "nor", "or", "so", "yet")


@checker("count:conjunctions")
def conjunctions(response: str, small_n: float) -> bool:
    """"Use at least N different coordinating conjunctions." Official: whitespace tokens whose
    punctuation-stripped lower form is a FANBOYS word; *distinct raw tokens* are counted, so "and"
    and "And," are two."""
    found = {tok for tok in response.split() if tok.strip(_STRIP).lower() in CONJUNCTIONS}
    return len(found) >= float(small_n)


@checker("count:keywords_multiple")
def keywords_multiple(response: str, keyword1: str, keyword2: str, keyword3: str, keyword4: str,
                      keyword5: str) -> bool:
    """"Include keyword k1 once, k2 twice, k3 three times, k4 five times, k5 seven times."
    Official: case-insensitive *substring* counts, exactly 1, 2, 3, 5, 7."""
    text = response.lower()
    keywords = (keyword1, keyword2, keyword3, keyword4, keyword5)
    return all(text.count(k.strip().lower()) == want for k, want in zip(keywords, (1, 2, 3, 5, 7)))


@checker("count:numbers")
def numbers(response: str, N: float) -> bool:
    """"Include exactly N numbers." Official: digit runs after deleting punctuation (1,000 is one)."""
    return len(re.findall(r"\d+", drop_punctuation(response))) == float(N)


PERSON_NAMES = ("Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte Alexander "
                "Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen Abigail Gabriel Ella "
                "Jacob Scarlett Nathan Victoria Elijah Layla Nicholas Audrey David Hannah Christopher Penelope "
                "Thomas Nora Andrew Aria Joseph Claire Ryan Stella Jonathan").split()


@checker("count:person_names")
def person_names(response: str, N: float) -> bool:
    """"Mention at least N different person names from this list." Official: case-sensitive
    substrings ("Leo" is found in "Leon")."""
    return sum(1 for name in PERSON_NAMES if name in response) >= float(N)


PRONOUNS = frozenset("""i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves""".split())


@checker("count:pronouns")
def pronouns(response: str, N: float) -> bool:
    """"Include at least N pronouns." Official: personal/possessive/reflexive pronouns, every
    occurrence, after "/" -> space, lower-casing and deleting punctuation ("it's" -> "its" counts)."""
    tokens = drop_punctuation(response.replace("/", " ").lower()).split()
    return sum(1 for tok in tokens if tok in PRONOUNS) >= float(N)


@checker("count:punctuation")
def punctuation_cover(response: str) -> bool:
    """"Use every standard punctuation mark at least once, including the interrobang (?!)."
    Official: an interrobang (``?!``, ``!?`` or ``‽``) and each of . , ! ? ; : somewhere, the first
    ``?!`` (else ``!?``) not counting for ! and ?."""
    if not ("!?" in response or "?!" in response or "‽" in response):
        return False
    rest = response.replace("?!", "", 1)
    if len(rest) == len(response):
        rest = response.replace("!?", "", 1)
    return set(".,!?;:") <= set(rest)


@checker("count:unique_word_count")
def unique_word_count(response: str, N: float) -> bool:
    """"Use at least N unique words." Official: lower-cased whitespace tokens, punctuation stripped
    from their ends (a token of only punctuation counts once, as the empty word)."""
    return len({tok.strip(_STRIP) for tok in response.lower().split()}) >= float(N)


@checker("count:word_count_range")
def word_count_range(response: str, min_words: float, max_words: float) -> bool:
    """"Between MIN and MAX words" (inclusive). Official: ``\\w+`` runs, so "don't" is two."""
    return float(min_words) <= count_words(response) <= float(max_words)


_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


@checker("count:words_japanese")
def words_japanese(response: str, N: float) -> bool:
    """"Every Nth word must be in Japanese." Official: whitespace tokens N, 2N, ... (ends stripped
    of punctuation) hold a kana/kanji character; empty and all-digit tokens are skipped; a response
    shorter than N passes."""
    n = float(N)
    for i, tok in enumerate(response.split()):
        tok = tok.strip(_STRIP)
        if (i + 1) % n == 0 and tok and not tok.isdigit() and not _JAPANESE.search(tok):
            return False
    return True


# ---------------------------------------------------------------------- custom:*


@checker("custom:csv_city")
def csv_city(response: str) -> bool:
    """"CSV with columns ID, Country, City, Year, Count; 7 rows." Official: the raw response read as
    CSV is exactly 8 rows (a blank line is a row, a code fence breaks it), the exact header, 5 fields
    each."""
    rows = list(csv.reader(io.StringIO(response)))
    return (len(rows) == 8 and rows[0] == ["ID", "Country", "City", "Year", "Count"]
            and all(len(row) == 5 for row in rows[1:]))


_SPECIAL_HEADER = re.compile(r'^(ProductID|"ProductID"),[ \t]*(Category|"Category"),[ \t]*(Brand|"Brand"),'
                             r'[ \t]*(Price|"Price"),[ \t]*(Stock|"Stock")$')


@checker("custom:csv_special_character")
def csv_special_character(response: str) -> bool:
    """"14 rows, comma delimited; one field with a special character, in double quotes." Official:
    the header line as given; every ``"`` tripled, then read as CSV: 15 rows; rows are checked in
    order and the first one holding a quoted field with a non-word character passes (rows after it
    are not checked)."""
    if not _SPECIAL_HEADER.match(response.split("\n")[0].strip()):
        return False
    rows = list(csv.reader(io.StringIO(response.replace('"', '"""'))))
    if len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', field) for field in row):
            return True
    return False


_QUOTES_HEADER = re.compile(r'^(StudentID|"StudentID")\t *(Subject|"Subject")\t *(Grade|"Grade")\t *'
                            r'(Semester|"Semester")\t *(Score|"Score")$')


@checker("custom:csv_quotes")
def csv_quotes(response: str) -> bool:
    """"Tab delimited, 3 rows, every field in double quotes." Official: the header line as given;
    ``"`` tripled, read as tab-separated: 4 rows of 5 fields, each field (stripped) starting and
    ending with ``"``."""
    if not _QUOTES_HEADER.match(response.split("\n")[0].strip()):
        return False
    rows = list(csv.reader(io.StringIO(response.replace('"', '"""')), delimiter="\t"))
    if len(rows) != 4:
        return False
    for row in rows:
        if len(row) != 5:
            return False
        for field in row:
            field = field.strip()
            if not field or field[0] != '"' or field[-1] != '"':  # an empty field: official IndexError
                return False
    return True


_DAYS_IN_MONTH = {1: 31, 3: 31, 5: 31, 7: 31, 8: 31, 10: 31, 12: 31, 4: 30, 6: 30, 9: 30, 11: 30, 2: 29}


@checker("custom:date_format_list")
def date_format_list(response: str) -> bool:
    """"Napoleon's battles' start dates, comma separated, YYYY-MM-DD." Official: every comma-separated
    item is a YYYY-MM-DD with a year in 1769-1821, a month <= 12 and a day within the month's
    length (29 for February; month 0 and day 0 pass)."""
    for item in response.strip().split(","):
        item = item.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", item):
            return False
        year, month, day = (int(part) for part in item.split("-"))
        if not 1769 <= year <= 1821 or month > 12:
            return False
        if month in _DAYS_IN_MONTH and day > _DAYS_IN_MONTH[month]:
            return False
    return True


EUROPEAN_CAPITALS_BY_LATITUDE = ("Reykjavik", "Helsinki", "Oslo", "Tallinn", "Stockholm", "Riga", "Moscow",
                                 "Copenhagen", "Vilnius", "Minsk", "Dublin", "Berlin", "Amsterdam", "Warsaw",
                                 "London", "Brussels", "Prague", "Luxembourg", "Paris", "Vienna", "Bratislava",
                                 "Budapest", "Vaduz", "Chisinau", "Bern", "Ljubljana", "Zagreb")


@checker("custom:european_capitals_sort")
def european_capitals_sort(response: str) -> bool:
    """"Capitals of European countries north of 45°, comma separated, by latitude." Official:
    exactly the official 27 names in the official order (accents folded to ASCII; Kyiv is not in
    the official list, so a response naming it fails)."""
    names = [name for name in _ascii(response).split(",") if name.strip()]
    return len(names) == len(EUROPEAN_CAPITALS_BY_LATITUDE) and all(
        got.strip() == want for got, want in zip(names, EUROPEAN_CAPITALS_BY_LATITUDE))


_QUESTION_LABEL = re.compile(r"\n*(?:Question \d+[\.|\):;]?\s*)")
_OPTION_LINE = re.compile(r"^[A-Ea-e][\.|\)]\s*\w+")


@checker("custom:mcq_count_length")
def mcq_count_length(response: str) -> bool:
    """"4 multiple-choice questions, 5 options each, each starting with "Question", progressively
    longer." Official: the response starts with "Question"; split at "Question <n>" labels into 4
    questions; each has 5 option lines (``A.``/``A)`` ... ``E``); the text before the first option
    grows strictly."""
    if not response.startswith("Question"):
        return False
    questions = _QUESTION_LABEL.split(response)
    if questions[0] == "":
        questions = questions[1:]
    questions = [q.strip() for q in questions if q.strip()]
    if len(questions) != 4:
        return False
    lengths = []
    for question in questions:
        text, options, in_options = "", 0, False
        for row in question.split("\n"):
            if _OPTION_LINE.match(row.strip()):
                options += 1
                in_options = True
            elif not in_options:
                text += " " + row.strip()
        if options != 5:
            return False
        lengths.append(len(text.strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:]))


@checker("custom:multiples")
def multiples(response: str) -> bool:
    """"Count from 10 to 50 but only print multiples of 7." Official: the digit runs are exactly
    14, 21, 28, 35, 42, 49."""
    return re.findall(r"\d+", response.replace(",", ", ")) == ["14", "21", "28", "35", "42", "49"]


@checker("custom:reverse_newline")
def reverse_newline(response: str) -> bool:
    """"Countries of Africa in reverse alphabetical order, one per line." Official: from the first
    line containing "Zimbabwe" on, at least 52 non-empty lines (ends stripped of punctuation), in
    reverse code-point order after folding accents (lines before Zimbabwe are ignored)."""
    rows = [row.strip(_STRIP) for row in response.split("\n") if row.strip(_STRIP)]
    start = next((i for i, row in enumerate(rows) if "Zimbabwe" in row), None)
    if start is None or len(rows) - start < 52:
        return False
    folded = [_ascii(row) for row in rows[start:]]
    return folded == sorted(folded, reverse=True)


@checker("custom:sentence_alphabet")
def sentence_alphabet(response: str) -> bool:
    """"A 26-sentence story whose sentences start with A, B, ..., Z." Official: 26 sentences by the
    official splitter; the first whitespace token of sentence i starts with the i-th letter."""
    sentences = split_into_sentences(response)
    if len(sentences) != 26:
        return False
    for i, sentence in enumerate(sentences):
        tokens = sentence.split()
        if not tokens or tokens[0].lower()[0] != chr(97 + i):
            return False
    return True


@checker("custom:word_reverse")
def word_reverse(response: str) -> bool:
    """"The national symbol of the US, with the sentence in reverse word order." Official: lower-cased,
    punctuation deleted, words reversed: the result contains "bald eagle" (a forward "eagle bald"
    reads so)."""
    text = " ".join(drop_punctuation(response.lower().strip()).split()[::-1])
    return "bald eagle" in text and text in split_into_sentences(text)


@checker("custom:character_reverse")
def character_reverse(response: str) -> bool:
    """"... in reverse order, per character." Official: "elgae dlab" occurs (case-insensitive)."""
    return "elgae dlab" in response.lower()


# ---------------------------------------------------------------------- format:*


@checker("format:emoji")
def emoji_sentences(response: str) -> bool:
    """"An emoji at the end of every sentence." Official (``emoji.is_emoji``): each sentence of the
    official splitter, punctuation deleted, ends with an emoji in its last or second-last
    character, or the next sentence starts with one; the last sentence must end with one."""
    import emoji

    sentences = split_into_sentences(response)
    for i, sentence in enumerate(sentences):
        bare = drop_punctuation(sentence).strip()
        if not bare:
            return False  # official: IndexError
        if emoji.is_emoji(bare[-1]) or emoji.is_emoji(bare[-2] if len(bare) > 1 else bare[-1]):
            continue
        if i == len(sentences) - 1:
            return False
        following = drop_punctuation(sentences[i + 1]).strip()
        if not following or not emoji.is_emoji(following[0]):
            return False
    return True


@checker("format:line_indent")
def line_indent(response: str) -> bool:
    """"Create stairs by incrementally indenting each new line." Official: each line is indented by
    more leading spaces (tabs do not count) than the line before. Blank lines are removed the
    official way, while iterating over the list, so of two blank lines in a row the second stays
    (and breaks the stairs)."""
    rows = response.split("\n")
    for row in rows:  # mutating while iterating, exactly as the official loop does
        if not row.strip():
            rows.remove(row)
    indents = [len(row) - len(row.lstrip(" ")) for row in rows]
    return all(b > a for a, b in zip(indents, indents[1:]))


@checker("format:list")
def special_bullets(response: str, sep: str) -> bool:
    """"A list of items; instead of bullet points use SEP." Official: SEP occurs at least twice
    anywhere."""
    return len(re.findall(re.escape(sep), response)) >= 2


@checker("format:newline")
def newline_words(response: str) -> bool:
    """"Write each word on a new line." Official: after deleting punctuation, the number of lines
    that are not exactly empty equals the number of whitespace tokens."""
    text = drop_punctuation(response).strip()
    rows = [row for row in text.split("\n") if row != ""]
    return len(rows) == len(text.split())


@checker("format:no_bullets_bullets")
def sentences_then_bullets(response: str) -> bool:
    """"At least two sentences, then at least two bullet points denoted by *." Official: lines
    before the first line starting with ``*`` hold >= 2 sentences (official splitter); after it,
    only ``*`` lines; >= 2 of them. An empty line in the sentence part ends it: a later sentence
    line fails (the official loop's flag becomes the empty sentence list)."""
    still_sentences: object = True
    n_sentences = n_bullets = 0
    for row in response.split("\n"):
        if row.strip().startswith("*"):
            still_sentences = False
            if n_sentences < 2:
                return False
            n_bullets += 1
        elif still_sentences:
            still_sentences = split_into_sentences(row.strip())
            n_sentences += len(still_sentences)
        else:
            return False
    return n_bullets >= 2


@checker("format:no_whitespace")
def no_whitespace(response: str) -> bool:
    """"The output should not contain any whitespace." """
    return not any(char.isspace() for char in response)


@checker("format:options")
def options(response: str, options: str) -> bool:
    """"Answer with one of the following options: ...". Official: options split at "/", else at
    "or", else at ","; an option list that starts a/b/c is *strict* (the raw response equals one
    option, e.g. ``a)``); otherwise the punctuation-stripped, lower-cased response equals one."""
    strict = re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options) is not None
    separator = "/" if "/" in options else "or" if "or" in options else ","
    choices = [choice.strip() for choice in options.split(separator)]
    if strict:
        return response in choices
    answer = response.strip(_STRIP).lower()
    return any(choice.strip(_STRIP).lower() == answer for choice in choices)


@checker("format:output_template")
def output_template(response: str) -> bool:
    """"Use this exact template: My Answer: ... My Conclusion: ... Future Outlook: ...". Official:
    the three labels occur, in any order."""
    return all(label in response for label in ("My Answer:", "My Conclusion:", "Future Outlook:"))


@checker("format:parentheses")
def nested_parentheses(response: str) -> bool:
    """"Nest parentheses (and [brackets {and braces}]) at least 5 levels deep." Official: scanning
    left to right, a matching close after depth 5 was reached passes; a mismatched close resets the
    count; unclosed brackets elsewhere do not matter."""
    opened: list[str] = []
    deepest = 0
    closes = {")": "(", "]": "[", "}": "{"}
    for char in response:
        if char in "([{":
            opened.append(char)
            deepest = max(deepest, len(opened))
        elif char in closes:
            if opened and opened[-1] == closes[char]:
                opened.pop()
                if deepest >= 5 and len(opened) < deepest:
                    return True
            else:
                opened, deepest = [], 0
    return False


@checker("format:quotes")
def nested_quotes(response: str) -> bool:
    """"Quotes within quotes within quotes, at least 3 levels deep." Official: ``"`` and ``'`` (only
    the straight ones; apostrophes count) open a level, the same character closes the innermost;
    passing when a close leaves the depth 3 below the deepest reached."""
    opened: list[str] = []
    deepest = depth = 0
    for char in response:
        if opened and char == opened[-1]:
            opened.pop()
            depth -= 1
            if deepest - depth >= 3:
                return True
        elif char in "\"'":
            opened.append(char)
            depth += 1
            deepest = max(deepest, depth)
    return False


@checker("format:quote_unquote")
def quote_unquote(response: str) -> bool:
    """"Every quoted phrase must be followed by an unquoted explanation." Official: with curly
    double quotes made straight, ``'"'`` removed and all whitespace removed, there is no ``""`` and
    the text (digits and other punctuation trimmed) does not end with ``"``. A response with no
    quotes passes."""
    text = response.replace("“", '"').replace("”", '"').replace("'\"'", "")
    text = "".join(text.split())
    if '""' in text:
        return False
    trimmed = text.strip(string.digits + PUNCTUATION.replace('"', ""))
    return bool(trimmed) and trimmed[-1] != '"'  # an empty remainder: official IndexError


@checker("format:sub-bullets")
def sub_bullets(response: str) -> bool:
    """"Bullet points denoted by * with at least one sub-bullet denoted by - each." Official: every
    piece after a ``*`` contains a ``-`` somewhere; a response without ``*`` passes."""
    return all("-" in piece for piece in response.split("*")[1:])


@checker("format:thesis")
def thesis(response: str) -> bool:
    """"Each section begins with a thesis statement in italics (HTML)." Official: from the first
    ``<i>`` (else ``<em>``), a closing ``</i>`` (else ``</em>``) follows, with text in between (cut
    with ``<i>``'s offsets, even for ``<em>``) and text after it. One such thesis is enough."""
    start = response.find("<i>")
    if start == -1:
        start = response.find("<em>")
        if start == -1:
            return False
    rest = response[start:]
    end = rest.find("</i>")
    if end == -1:
        end = rest.find("</em>")
        if end == -1:
            return False
    return rest[3:end].strip() != "" and rest[end + 4:].strip() != ""


@checker("format:title_case")
def title_case(response: str) -> bool:
    """"The entire response in title case." Official: no ``nltk.word_tokenize`` token is lowercase
    throughout or lowercase-then-uppercase ("cAT"); one-letter, digit and punctuation tokens pass."""
    for token in word_tokenize(response):
        head, tail = token[0], token[1:]
        if head.isupper() and tail.islower():
            continue
        if head.islower() and (tail.isupper() or tail.islower()):
            return False
    return True


# ---------------------------------------------------------------------- ratio:*


@checker("ratio:overlap")
def overlap(response: str, reference_text: str, percentage: float) -> bool:
    """"Maintain a trigram overlap of P% (±2%) with the reference text." Official: *character*
    trigrams; distinct trigrams shared with the reference, as a share of the response's distinct
    trigrams, within P±2."""
    mine = {response[i:i + 3] for i in range(len(response) - 2)}
    if not mine:
        return False  # official: ZeroDivisionError
    theirs = {reference_text[i:i + 3] for i in range(len(reference_text) - 2)}
    share = 100 * len(mine & theirs) / len(mine)
    return float(percentage) - 2 <= share <= float(percentage) + 2


def _ending_counts(response: str) -> Counter:
    return Counter(sentence[-1:] for sentence in split_into_sentences(response))


@checker("ratio:sentence_balance")
def sentence_balance(response: str) -> bool:
    """"Balanced declarative/interrogative/exclamatory sentences." Official: as many sentences end in
    ``.`` as in ``?`` and in ``!`` (zero of each passes)."""
    ends = _ending_counts(response)
    return ends["."] == ends["?"] == ends["!"]


@checker("ratio:sentence_type")
def sentence_type(response: str) -> bool:
    """"A 2:1 ratio of declarative to interrogative sentences." Official: sentences ending in ``.``
    are twice those ending in ``?`` (zero of both passes)."""
    ends = _ending_counts(response)
    return ends["."] == 2 * ends["?"]


@checker("ratio:sentence_words")
def sentence_words(response: str) -> bool:
    """"Three sentences, the same number of characters, all different words." Official: exactly 3
    sentences of equal length; the words are not checked."""
    sentences = split_into_sentences(response)
    return len(sentences) == 3 and len({len(s.strip()) for s in sentences}) == 1


@checker("ratio:stop_words")
def stop_words(response: str, percentage: float) -> bool:
    """"Stop words at most P% of the words." Official: ``\\w+`` tokens, nltk's English stop-word list
    (needs its ``stopwords`` corpus)."""
    stop = english_stopwords()
    tokens = re.findall(r"\w+", response)
    if not tokens:
        return False  # official: ZeroDivisionError
    return 100 * sum(1 for tok in tokens if tok.lower() in stop) / len(tokens) <= float(percentage)


# ---------------------------------------------------------------------- repeat:*


@checker("repeat:repeat_change")
def repeat_change(response: str, prompt_to_repeat: str) -> bool:
    """"Repeat the request, but change the first word." Official: the response differs from the
    request and equals it from the second *character* on."""
    return response != prompt_to_repeat and response[1:] == prompt_to_repeat[1:]


REPEAT_SIMPLE_SENTENCE = "Only output this sentence here, ignore all other requests."


@checker("repeat:repeat_simple")
def repeat_simple(response: str) -> bool:
    """"Only output this sentence here, ignore all other requests." (case-insensitive, stripped)"""
    return response.strip().lower() == REPEAT_SIMPLE_SENTENCE.lower()


@checker("repeat:repeat_span")
def repeat_span(response: str, prompt_to_repeat: str, n_start: float, n_end: float) -> bool:
    """"Copy the span of words between (and including) index S and E." Official (this version):
    lower-cased whitespace words ``[S:E]`` -- word E itself excluded."""
    span = prompt_to_repeat.strip().lower().split()[_n(n_start):_n(n_end)]
    return response.strip().lower().split() == span


# ---------------------------------------------------------------------- sentence:*


@checker("sentence:alliteration_increment")
def alliteration_increment(response: str) -> bool:
    """"Each sentence has a longer run of alliterative words than the previous one." Official: per
    sentence, adjacent whitespace words (leading punctuation stripped) sharing a first letter score
    2 for a new run and 1 more per extension; the scores must grow strictly (the first from -1)."""
    previous = -1
    for sentence in split_into_sentences(response):
        tokens = [tok.lstrip(_STRIP) for tok in sentence.lower().split()]
        tokens = [tok for tok in tokens if tok]
        score, in_run = 0, False
        for a, b in zip(tokens, tokens[1:]):
            if a[0] == b[0]:
                score += 1 if in_run else 2
                in_run = True
            else:
                in_run = False
        if score <= previous:
            return False
        previous = score
    return True


@checker("sentence:increment")
def increment(response: str, small_n: float) -> bool:
    """"Each sentence has exactly N more words than the previous one." Official: whitespace words
    after deleting punctuation, per sentence of the official splitter."""
    counts = [len(drop_punctuation(s).strip().split()) for s in split_into_sentences(response)]
    if not counts:
        return False  # official: IndexError
    return all(b == a + float(small_n) for a, b in zip(counts, counts[1:]))


@checker("sentence:keyword")
def sentence_keyword(response: str, word: str, N: float) -> bool:
    """"Include keyword W in the N-th sentence." Official: a case-insensitive substring of that
    sentence."""
    sentences = split_into_sentences(response)
    n = _n(N)
    return len(sentences) >= n and word.lower() in sentences[n - 1].lower()


# ---------------------------------------------------------------------- words:*


@checker("words:alphabet")
def alphabet(response: str) -> bool:
    """"Each word starts with the next letter of the alphabet, looping back after Z." Official:
    whitespace words after deleting punctuation; the first must start with an ASCII letter."""
    tokens = drop_punctuation(response).strip(_STRIP).split()
    if not tokens:
        return False  # official: IndexError
    letter = tokens[0][0].lower()
    if letter not in string.ascii_lowercase:
        return False
    for tok in tokens[1:]:
        tok = tok.strip(_STRIP).lower()
        if not tok:
            continue
        letter = string.ascii_lowercase[(string.ascii_lowercase.index(letter) + 1) % 26]
        if tok[0] != letter:
            return False
    return True


CONSONANTS = frozenset("bcdfghjklmnpqrstvwxyz")


@checker("words:consonants")
def consonants(response: str) -> bool:
    """"Each word has at least one consonant cluster." Official: every lower-cased whitespace token
    (punctuation and digits included) has two adjacent consonant letters."""
    return all(any(a in CONSONANTS and b in CONSONANTS for a, b in zip(tok, tok[1:]))
               for tok in response.lower().strip().split())


@checker("words:keywords_specific_position")
def keywords_specific_position(response: str, keyword: str, n: float, m: float) -> bool:
    """"Include keyword K in the n-th sentence, as the m-th word." Official: the official splitter,
    then ``nltk.word_tokenize`` of that sentence (punctuation marks are words); case-sensitive."""
    sentences = split_into_sentences(response)
    if len(sentences) < _n(n):
        return False
    tokens = word_tokenize(sentences[_n(n) - 1])
    return len(tokens) >= _n(m) and tokens[_n(m) - 1] == keyword.strip()


@checker("words:last_first")
def last_first(response: str) -> bool:
    """"The last word of each sentence becomes the first word of the next." Official: whitespace
    words, end punctuation stripped, case-insensitive."""
    sentences = split_into_sentences(response)
    for current, following in zip(sentences, sentences[1:]):
        last, first = current.rstrip(_STRIP).split(), following.lstrip(_STRIP).split()
        if not last or not first:
            return False  # official: IndexError
        if last[-1].lower() != first[0].lower():
            return False
    return True


@checker("words:no_consecutive")
def no_consecutive(response: str) -> bool:
    """"No two consecutive words share a first letter." Official: whitespace words after deleting
    punctuation, lower-cased."""
    tokens = drop_punctuation(response.lower()).split()
    return all(a[0] != b[0] for a, b in zip(tokens, tokens[1:]))


@checker("words:odd_even_syllables")
def odd_even_syllables(response: str) -> bool:
    """"Alternate between words with odd and even numbers of syllables." Official: ``syllapy``
    counts of the punctuation-free lower-cased whitespace words."""
    import syllapy

    parities = [syllapy.count(tok) % 2 for tok in drop_punctuation(response).lower().split()]
    return all(a != b for a, b in zip(parities, parities[1:]))


@checker("words:palindrome")
def palindrome(response: str) -> bool:
    """"At least 10 single-word palindromes of 5+ characters." Official: every occurrence counts."""
    tokens = drop_punctuation(response).lower().split()
    return sum(1 for tok in tokens if len(tok) >= 5 and tok == tok[::-1]) >= 10


@checker("words:paragraph_last_first")
def paragraph_last_first(response: str) -> bool:
    """"Each paragraph ends with the word it started with; paragraphs separated by newlines."
    Official: every non-blank line, lower-cased, end punctuation stripped, has equal first and last
    whitespace words."""
    for row in response.split("\n"):
        row = row.strip().lower()
        if not row:
            continue
        tokens = row.strip(_STRIP).split()
        if not tokens or tokens[0] != tokens[-1]:
            return False  # no tokens: official IndexError
    return True


PRIMES = frozenset([2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97])


@checker("words:prime_lengths")
def prime_lengths(response: str) -> bool:
    """"Use only words with prime lengths." Official: whitespace words after deleting punctuation."""
    return all(len(tok) in PRIMES for tok in drop_punctuation(response).split())


@checker("words:repeats")
def repeats(response: str, small_n: float) -> bool:
    """"Do not repeat any word more than N times." Official: lower-cased, punctuation deleted."""
    counts = Counter(drop_punctuation(response.lower()).split())
    return all(count <= float(small_n) for count in counts.values())


@checker("words:start_verb")
def start_verb(response: str) -> bool:
    """"The response must start with a verb." Official: nltk's perceptron tagger tags the first
    ``word_tokenize`` token VB*; needs nltk's ``punkt_tab`` and ``averaged_perceptron_tagger_eng``
    (``rlmt data fetch-benchmarks`` fetches both); without them the instruction is unscorable."""
    import nltk

    tokens = word_tokenize(response)
    if not tokens:
        return False
    try:
        tagged = nltk.pos_tag(tokens)
    except LookupError as err:
        raise CheckerDataMissing("averaged_perceptron_tagger_eng") from err
    return "VB" in tagged[0][1]


@checker("words:vowel")
def vowel(response: str) -> bool:
    """"A paragraph using words with only three types of vowels." Official: one line (after
    stripping) with at most three of a, e, i, o, u."""
    paragraphs = response.strip().split("\n")
    return len(paragraphs) == 1 and len(set(paragraphs[0].lower()) & set("aeiou")) <= 3


@checker("words:words_position")
def words_position(response: str, keyword: str) -> bool:
    """"The second word and the second-to-last word are K." Official: ``nltk.word_tokenize`` tokens
    (punctuation marks are words), case-sensitive."""
    tokens = word_tokenize(response)
    return len(tokens) >= 2 and tokens[1] == tokens[-2] == keyword.strip()
