"""Every IFBench checker on a response that follows its instruction and one that does not."""

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
    "count:punctuation": ({}, "Wait, what?! Yes; it's \"fine\": (really) - ok. Go!", "Wait, what? Yes."),
    "count:unique_word_count": ({"N": 5.0}, "one two three four five", "one one one two two"),
    "count:word_count_range": ({"min_words": 3.0, "max_words": 5.0}, "one two three four", "one two"),
    "count:words_japanese": ({"N": 2.0}, f"I {JA} like {JA} tea {JA}", f"I like {JA} tea"),
    "custom:csv_city": ({}, CSV_CITY, CSV_CITY.rsplit("\n", 1)[0]),
    "custom:csv_quotes": ({}, CSV_QUOTES, CSV_QUOTES.replace('"Math"', "Math")),
    "custom:csv_special_character": ({}, CSV_SPECIAL, CSV_SPECIAL.replace('"Smith & Sons"', "Smith")),
    "custom:date_format_list": ({}, "1796-04-12, 1805-12-02, 1815-06-18", "12/04/1796, 1805-12-02"),
    "custom:european_capitals_sort": ({}, CAPITALS, ", ".join(reversed(CAPITALS.split(", ")))),
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
                      "<i>Encryption protects streams.</i> Keys.\n\nDecoding is hard."),
    "format:title_case": ({}, "The Factions of Ohio\nA Tale of the River Folk", "The factions of Ohio"),
    "ratio:overlap": ({"percentage": 40.0, "reference_text": "the cat sat on the mat today"},
                      "the cat sat on a dog", "a dog ran in the park"),
    "ratio:sentence_balance": ({}, "It rains. Does it? Wow!", "It rains. It pours. Wow!"),
    "ratio:sentence_type": ({}, "It rains. It pours. Does it?", "It rains. Does it? Why?"),
    "ratio:sentence_words": ({}, "Cats nap. Dogs run. Owls fly.", "Cats nap. Cats run. Owls fly."),
    "ratio:stop_words": ({"percentage": 30.0}, "Bright stars shine over quiet valleys tonight.",
                         "It is the one that we all want to have."),
    "repeat:repeat_change": ({"prompt_to_repeat": REPEAT}, REPEAT.replace("Write", "Create", 1), REPEAT),
    "repeat:repeat_simple": ({}, "Only output this sentence here, ignore all other requests.", "Sorting done."),
    "repeat:repeat_span": ({"prompt_to_repeat": SPAN_PROMPT, "n_start": 3, "n_end": 6},
                           "code and theory behind", "the context, code and"),
    "sentence:alliteration_increment": ({}, "Big dogs run. Cute cats cuddle calmly.", "Cute cats cuddle calmly. Big dogs run."),
    "sentence:increment": ({"small_n": 2.0}, "I run. I run fast now. I run fast now every day.", "I run. I run fast."),
    "sentence:keyword": ({"N": 2.0, "word": "fleetness"}, "Deer run. Their fleetness helps.", "Their fleetness helps. Deer run."),
    "words:alphabet": ({}, "Xylophones yield zesty airs", "Apples are nice"),
    "words:consonants": ({}, "Strong trucks crash", "Strong cats run"),
    "words:keywords_specific_position": ({"keyword": "giggle", "n": 2.0, "m": 3.0},
                                         "Hello there. We all giggle loudly.", "Hello there. We giggle loudly."),
    "words:last_first": ({}, "I like tea. Tea is warm. Warm days are nice.", "I like tea. Coffee is warm."),
    "words:no_consecutive": ({}, "Red apples grow tall", "Red rabbits run"),
    "words:odd_even_syllables": ({}, "cat window dog table", "cat dog window"),
    "words:palindrome": ({}, "level radar civic kayak refer madam rotor stats tenet racecar", "level radar civic"),
    "words:paragraph_last_first": ({}, "Open the door and stay open\nClose it and then close",
                                   "Open the door and stay\nClose it and then close"),
    "words:prime_lengths": ({}, "It was the one", "Baudrillard means simulation"),
    "words:repeats": ({"small_n": 2.0}, "the cat and the dog", "the the the cat"),
    "words:vowel": ({}, "Cats can nap in a big pit", "I like our blue house"),
    "words:words_position": ({"keyword": "vibrant"}, "A vibrant scene feels vibrant here",
                             "Vibrant scene feels so vibrant"),
}


def test_every_checker_has_a_case():
    assert set(CASES) | {"words:start_verb"} == set(CHECKERS)


@pytest.mark.parametrize("instruction_id", sorted(CASES))
def test_checker_passes_and_fails(instruction_id):
    kwargs, good, bad = CASES[instruction_id]
    fn = CHECKERS[instruction_id]
    assert fn(good, **kwargs) is True, f"{instruction_id} should pass: {good!r}"
    assert fn(bad, **kwargs) is False, f"{instruction_id} should fail: {bad!r}"


def test_start_verb_needs_the_tagger_or_is_unscorable():
    import nltk

    try:
        nltk.data.find("taggers/averaged_perceptron_tagger_eng")
    except LookupError:
        with pytest.raises(ifbench_checkers.CheckerDataMissing):
            CHECKERS["words:start_verb"]("Imagine an empire of suffering.")
    else:
        assert CHECKERS["words:start_verb"]("Imagine an empire of suffering.") is True
        assert CHECKERS["words:start_verb"]("The empire suffers.") is False


def test_checkers_cover_every_id_in_the_real_data(data_dir):
    rows = json.loads((data_dir / "benchmarks" / "ifbench" / "data.json").read_text())
    ids = {i for row in rows for i in row["instruction_id_list"]}
    assert len(ids) == 57
    assert ids <= set(CHECKERS)
