"""Every IFBench checker (official semantics, allenai/IFBench d793cb6) on a response that follows
its instruction and one that does not; the corrected readings where they differ; the checkers that
need nltk data. Parity with the official code itself: tests/test_official_parity.py."""

from __future__ import annotations

import json

import pytest

from rlmt.benchmarks import ifbench_checkers
from rlmt.benchmarks.ifbench_checkers import CHECKERS

JA = "日本"
CSV_CITY = "ID,Country,City,Year,Count\n" + "\n".join(f"{i},France,Paris,202{i},{i * 10}" for i in range(1, 8))
CSV_QUOTES = "\n".join("\t".join(f'"{c}"' for c in row) for row in [
    ["StudentID", "Subject", "Grade", "Semester", "Score"], ["1", "Math", "A", "Fall", "93"],
    ["2", "Art", "B", "Spring", "85"], ["3", "Music", "A", "Fall", "97"]])
SPECIAL_BRAND = '"Smith & Sons"'
CSV_SPECIAL = "ProductID,Category,Brand,Price,Stock\n" + "\n".join(
    f"{i},Tools,{SPECIAL_BRAND if i == 3 else 'Acme'},9.99,{i}" for i in range(1, 15))
CAPITALS = "Reykjavik, Helsinki, Oslo, Tallinn, Stockholm, Riga, Moscow, Copenhagen, Vilnius, Minsk, Dublin, " \
           "Berlin, Amsterdam, Warsaw, London, Brussels, Kyiv, Prague, Luxembourg, Paris, Vienna, Bratislava, " \
           "Budapest, Vaduz, Chisinau, Bern, Ljubljana, Zagreb"
AFRICA = sorted(["Algeria", "Angola", "Benin", "Botswana", "Burkina Faso", "Burundi", "Cabo Verde", "Cameroon",
                 "Central African Republic", "Chad", "Comoros", "Republic of the Congo",
                 "Democratic Republic of the Congo", "Djibouti", "Egypt", "Equatorial Guinea", "Eritrea", "Eswatini",
                 "Ethiopia", "Gabon", "Gambia", "Ghana", "Guinea", "Guinea-Bissau", "Ivory Coast", "Kenya",
                 "Lesotho", "Liberia", "Libya", "Madagascar", "Malawi", "Mali", "Mauritania", "Mauritius", "Morocco",
                 "Mozambique", "Namibia", "Niger", "Nigeria", "Rwanda", "Sao Tome and Principe", "Senegal",
                 "Seychelles", "Sierra Leone", "Somalia", "South Africa", "South Sudan", "Sudan", "Tanzania", "Togo",
                 "Tunisia", "Uganda", "Zambia", "Zimbabwe"], key=str.lower)
ALPHA_STORY = " ".join(f"{w} went on." for w in [
    "Anna", "Bob", "Carl", "Dana", "Eve", "Fred", "Gina", "Hal", "Ivy", "Jon", "Kim", "Lou", "Max", "Ned", "Olga",
    "Pam", "Quinn", "Rob", "Sue", "Tom", "Uma", "Vic", "Walt", "Xena", "Yuri", "Zoe"])
MCQ = "\n\n".join(
    f"Question {i}: {'Which ' + 'very ' * i + 'famous movement began?'}\nA) one\nB) two\nC) three\nD) four\nE) five"
    for i in range(1, 5))
REPEAT = "Write a python program to implement a simple JPEG compression algorithm without any errors."
SPAN_PROMPT = "explain the context, code and theory behind the paper Identifying Candidate Spaces."

# id -> (kwargs, a response that follows the instruction, one that does not)
CASES: dict[str, tuple[dict, str, str]] = {
    "count:conjunctions": ({"small_n": 3.0}, "I came and saw, but I left, so it ended.", "I came and I saw and I left."),
    "count:keywords_multiple": (
        {"keyword1": "sun", "keyword2": "moon", "keyword3": "star", "keyword4": "sky", "keyword5": "sea"},
        "sun moon moon star star star sky sky sky sky sky sea sea sea sea sea sea sea",
        "sun moon star sky sea"),
    "count:numbers": ({"N": 2.0}, "I have 3 cats and 1,200 fish.", "I have 3 cats, 4 dogs and 5 fish."),
    "count:person_names": ({"N": 3.0}, "Emma met Liam and Noah.", "Emma met Bob and Alice."),
    "count:pronouns": ({"N": 4.0}, "I told you that she saw them.", "The dog saw the cat."),
    "count:punctuation": ({}, "Wait, what?! Really? Yes; fine: ok. Go!", "Wait, what?! Yes; fine: ok. Go!"),
    "count:unique_word_count": ({"N": 5.0}, "one two three four five", "one one one two two"),
    "count:word_count_range": ({"min_words": 3.0, "max_words": 5.0}, "one two three four", "one two"),
    "count:words_japanese": ({"N": 2.0}, f"I {JA} like {JA} tea {JA}", f"I like {JA} tea"),
    "custom:character_reverse": ({}, ".SU eht fo lobmys lanoitan eht si elgae dlab ehT", "The bald eagle."),
    "custom:csv_city": ({}, CSV_CITY, CSV_CITY.rsplit("\n", 1)[0]),
    "custom:csv_quotes": ({}, CSV_QUOTES, CSV_QUOTES.replace('"Math"', "Math")),
    "custom:csv_special_character": ({}, CSV_SPECIAL, CSV_SPECIAL.replace('"Smith & Sons"', "Smith")),
    "custom:date_format_list": ({}, "1796-04-12, 1805-12-02, 1815-06-18", "12/04/1796, 1805-12-02"),
    "custom:european_capitals_sort": ({}, CAPITALS.replace(" Kyiv,", ""), CAPITALS),
    "custom:mcq_count_length": ({}, MCQ, MCQ.replace("E) five", "")),
    "custom:multiples": ({}, "14, 21, 28, 35, 42, 49", "7, 14, 21, 28, 35, 42, 49"),
    "custom:reverse_newline": ({}, "\n".join(reversed(AFRICA)), "\n".join(AFRICA)),
    "custom:sentence_alphabet": ({}, ALPHA_STORY, ALPHA_STORY.replace("Bob", "Rob")),
    "custom:word_reverse": ({}, "US the of symbol national the is eagle bald The.",
                            "The bald eagle is the national symbol of the US."),
    "format:emoji": ({}, "I love tea 🍵. It is warm ☀️! Do you agree? 🤔", "I love tea 🍵. It is warm."),
    "format:line_indent": ({}, "one\n  two\n    three", "one\n  two\n  three"),
    "format:list": ({"sep": "!?!?"}, "!?!? first\n!?!? second", "- first\n- second"),
    "format:newline": ({}, "one\ntwo\nthree", "one two\nthree"),
    "format:no_bullets_bullets": ({}, "First point. Second point.\n* a\n* b", "First point.\n* a\n* b"),
    "format:no_whitespace": ({}, "No,allsetsarenotclasses.", "No, not all."),
    "format:options": ({"options": "yes/no/maybe"}, "Maybe.", "Perhaps, it depends."),
    "format:output_template": ({}, "My Answer: yes My Conclusion: good Future Outlook: bright",
                               "Answer: yes. Conclusion: good."),
    "format:parentheses": ({}, "a (b [c {d (e [f] e) d} c] b) a", "a (b [c] b) a"),
    "format:quote_unquote": ({}, '"Hello" is a greeting and "bye" ends it.', '"Hello" "bye"'),
    "format:quotes": ({}, "He said \"she told me 'they shouted \"run\" loudly' today\" once.",
                      "He said \"she told me 'hi' today\"."),
    "format:sub-bullets": ({}, "* Roots\n  - absorb water\n* Leaves\n  - make sugar", "* Roots\n  - absorb water\n* Leaves"),
    "format:thesis": ({}, "<i>Encryption protects streams.</i> Keys matter.\n\n<em>Decoding is hard.</em> Why.",
                      "Encryption protects streams. <i>Keys.</i>"),
    "ratio:overlap": ({"percentage": 100.0, "reference_text": "the cat sat on the mat today"},
                      "the cat sat on the mat", "the cat sat on a dog"),
    "ratio:sentence_balance": ({}, "It rains. Does it? Wow!", "It rains. It pours. Wow!"),
    "ratio:sentence_type": ({}, "It rains. It pours. Does it?", "It rains. Does it? Why?"),
    "ratio:sentence_words": ({}, "Cats nap. Cats run. Owls fly.", "Cats nap. Dogs run fast. Owls fly."),
    "repeat:repeat_change": ({"prompt_to_repeat": REPEAT}, "w" + REPEAT[1:], REPEAT.replace("Write", "Create", 1)),
    "repeat:repeat_simple": ({}, "Only output this sentence here, ignore all other requests.", "Sorting done."),
    "repeat:repeat_span": ({"prompt_to_repeat": SPAN_PROMPT, "n_start": 3, "n_end": 6},
                           "code and theory", "code and theory behind"),
    "sentence:alliteration_increment": ({}, "Big dogs run. Cute cats cuddle calmly.", "Cute cats cuddle calmly. Big dogs run."),
    "sentence:increment": ({"small_n": 2.0}, "I run. I run fast now. I run fast now every day.", "I run. I run fast."),
    "sentence:keyword": ({"N": 2.0, "word": "fleetness"}, "Deer run. Their fleetness helps.", "Their fleetness helps. Deer run."),
    "words:alphabet": ({}, "Xylophones yield zesty airs", "Apples are nice"),
    "words:consonants": ({}, "Strong trucks crash", "Strong cats run"),
    "words:last_first": ({}, "I like tea. Tea is warm. Warm days are nice.", "I like tea. Coffee is warm."),
    "words:no_consecutive": ({}, "Red apples grow tall", "Red rabbits run"),
    "words:odd_even_syllables": ({}, "cat window dog table", "cat dog window"),
    "words:palindrome": ({}, "level radar civic kayak refer madam rotor stats tenet racecar", "level radar civic"),
    "words:paragraph_last_first": ({}, "Open the door and stay open\nClose it and then close",
                                   "Open the door and stay\nClose it and then close"),
    "words:prime_lengths": ({}, "It was the one", "Baudrillard means simulation"),
    "words:repeats": ({"small_n": 2.0}, "the cat and the dog", "the the the cat"),
    "words:vowel": ({}, "Cats can nap in a big pit", "I like our blue house"),
}

# ids whose official checker needs nltk data: (kwargs, good, bad) checked when the data is installed
NEEDS_NLTK_DATA: dict[str, tuple[dict, str, str]] = {
    "format:title_case": ({}, "The Factions Of Ohio\nA Tale Of The River Folk", "The factions of Ohio"),
    "ratio:stop_words": ({"percentage": 30.0}, "Bright stars shine over quiet valleys tonight.",
                         "It is the one that we all want to have."),
    "words:keywords_specific_position": ({"keyword": "giggle", "n": 2, "m": 3},
                                         "Hello there. We all giggle loudly.", "Hello there. We giggle loudly."),
    "words:start_verb": ({}, "Imagine an empire of suffering.", "The empire suffers."),
    "words:words_position": ({"keyword": "vibrant"}, "A vibrant scene feels vibrant here",
                             "Vibrant scene feels so vibrant"),
}

# the corrected readings: (kwargs, passes corrected but not official, passes official but not corrected)
CORRECTED_CASES: dict[str, tuple[dict, str | None, str]] = {
    "format:sub-bullets": ({}, None, "No bullets at all, a well-known text."),
    "format:quote_unquote": ({}, None, "No quotes at all."),
    "format:list": ({"sep": "-"}, None, "well-known and self-made"),
    "count:keywords_multiple": (
        {"keyword1": "sun", "keyword2": "moon", "keyword3": "star", "keyword4": "sky", "keyword5": "sea"},
        "sun sunny moon moon star star star sky sky sky sky sky sea sea sea sea sea sea sea",
        "sunny moon moon star star star sky sky sky sky sky sea sea sea sea sea sea sea"),
    "repeat:repeat_change": ({"prompt_to_repeat": REPEAT}, REPEAT.replace("Write", "Create", 1), "w" + REPEAT[1:]),
    "repeat:repeat_span": ({"prompt_to_repeat": SPAN_PROMPT, "n_start": 3, "n_end": 6},
                           "code and theory behind", "code and theory"),
    "ratio:sentence_balance": ({}, None, "no sentence marks"),
    "ratio:sentence_type": ({}, None, "no sentence marks"),
    "ratio:overlap": ({"percentage": 40.0, "reference_text": "the cat sat on the mat today"},
                      "the cat sat on a mat", "the cat sat on the mat and ran far away quickly"),
    "custom:european_capitals_sort": ({}, CAPITALS, CAPITALS.replace(" Kyiv,", "")),
}


def test_every_checker_has_a_case():
    assert set(CASES) | set(NEEDS_NLTK_DATA) == set(CHECKERS)
    assert not set(CASES) & set(NEEDS_NLTK_DATA)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_checker_passes_and_fails(instruction_id):
    kwargs, good, bad = CASES[instruction_id]
    fn = CHECKERS[instruction_id]
    assert fn(good, **kwargs) is True, f"{instruction_id} should pass: {good!r}"
    assert fn(bad, **kwargs) is False, f"{instruction_id} should fail: {bad!r}"


def _nltk_has(*resources: str) -> bool:
    import nltk

    try:
        for resource in resources:
            nltk.data.find(resource)
    except LookupError:
        return False
    return True


NLTK_RESOURCES = {"format:title_case": ("tokenizers/punkt_tab",), "ratio:stop_words": ("corpora/stopwords",),
                  "words:keywords_specific_position": ("tokenizers/punkt_tab",),
                  "words:start_verb": ("tokenizers/punkt_tab", "taggers/averaged_perceptron_tagger_eng"),
                  "words:words_position": ("tokenizers/punkt_tab",)}


@pytest.mark.parametrize("instruction_id", sorted(NEEDS_NLTK_DATA))
def test_nltk_checkers_check_with_their_data_or_say_it_is_missing(instruction_id):
    kwargs, good, bad = NEEDS_NLTK_DATA[instruction_id]
    fn = CHECKERS[instruction_id]
    if not _nltk_has(*NLTK_RESOURCES[instruction_id]):
        with pytest.raises(ifbench_checkers.CheckerDataMissing):
            fn(good, **kwargs)
    else:
        assert fn(good, **kwargs) is True and fn(bad, **kwargs) is False


def test_fetch_benchmarks_fetches_every_nltk_resource_the_checkers_need():
    from rlmt.benchmarks.fetch import NLTK_RESOURCES as FETCHED

    assert {r.split("/")[1] for rs in NLTK_RESOURCES.values() for r in rs} <= set(FETCHED)


@pytest.mark.parametrize("instruction_id", sorted(CORRECTED_CASES))
def test_corrected_reading_differs_where_documented(instruction_id):
    from rlmt.benchmarks.ifbench_corrected import CORRECTED

    kwargs, only_corrected, only_official = CORRECTED_CASES[instruction_id]
    for text, official_says, corrected_says in ((only_corrected, False, True), (only_official, True, False)):
        if text is not None:
            assert CHECKERS[instruction_id](text, **kwargs) is official_says, text
            assert CORRECTED[instruction_id](text, **kwargs) is corrected_says, text
    good = CASES[instruction_id][1] if instruction_id in CASES else None
    assert set(CORRECTED) == set(CORRECTED_CASES)
    assert good is None or isinstance(CORRECTED[instruction_id](good, **CASES[instruction_id][0]), bool)


def test_reading_option_is_validated_and_recorded():
    from rlmt.benchmarks import BenchmarkError, get_benchmark

    with pytest.raises(BenchmarkError, match="unknown reading"):
        get_benchmark("ifbench", reading="lenient").checker("format:list", {"sep": "-"}, "")
    bench = get_benchmark("ifbench", reading="corrected")
    assert bench.checker("format:sub-bullets", {}, "")("No bullets, a well-known text.") is False
    assert get_benchmark("ifbench").checker("format:sub-bullets", {}, "")("No bullets, a well-known text.") is True


def test_checkers_cover_every_id_in_the_real_data(data_dir):
    rows = json.loads((data_dir / "benchmarks" / "ifbench" / "data.json").read_text())
    ids = {i for row in rows for i in row["instruction_id_list"]}
    assert len(ids) == 57
    assert ids <= set(CHECKERS)
