"""Thinking formats: the one extraction rule, SFT formatting and longcot_config.json I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlmt.thinking import (
    FORMATS,
    LONGCOT_FILE,
    NULL_ANSWER,
    WARM_NOTHINK,
    WARM_THINK,
    ZERO_NOTHINK,
    ZERO_THINK,
    ThinkingFormat,
    ThinkingFormatError,
    extract,
    format_for,
    format_output,
    sft_messages,
)

TAGS = ("<think>", "</think>", "<response>", "</response>")

# Text that is heavy in the characters the delimiters are made of, so near-misses get generated.
free_text = st.text(alphabet=st.sampled_from(list("abc <>/\n\t thinkresponse.!é")), max_size=60).filter(
    lambda s: not any(t in s for t in TAGS))
answer_text = free_text.filter(lambda s: s.strip() != "")


@settings(max_examples=150, deadline=None)
@given(thought=free_text, answer=answer_text, name=st.sampled_from(sorted(FORMATS)), strict=st.booleans())
def test_format_then_extract_round_trips(thought, answer, name, strict):
    fmt = FORMATS[name]
    got = extract(format_output(thought, answer, fmt), fmt, strict=strict)
    assert got.answer == answer.strip()
    assert got.thought == (thought.strip() if fmt.thinks else "")
    assert got.well_formed and got.issues == () and got.notes == ()


@settings(max_examples=150, deadline=None)
@given(output=st.lists(st.sampled_from([*TAGS, "a", " ", "\n", "x"]), max_size=12).map("".join),
       name=st.sampled_from(sorted(FORMATS)))
def test_strict_is_null_exactly_when_malformed(output, name):
    fmt = FORMATS[name]
    loose, strict = extract(output, fmt, strict=False), extract(output, fmt, strict=True)
    assert loose.issues == strict.issues and loose.notes == strict.notes and loose.thought == strict.thought
    if loose.well_formed:
        assert strict.answer == loose.answer != ""
    else:
        assert strict.answer == NULL_ANSWER
    # The thought never becomes the answer: a well-formed answer comes from after the delimiter.
    if fmt.longcot and fmt.longcot_delimiter not in output:
        assert loose.answer == "" and not loose.answer_found


# (format, output, issues, notes, non-strict answer, thought)
CASES = [
    # the delimiter is missing: a truncated thought; never scored as an answer
    (WARM_THINK, "<think>\nplanning and planning", ("missing-delimiter",), (), "", "planning and planning"),
    (ZERO_THINK, "<think> plan </think> the answer", ("missing-delimiter",), (), "", "plan </think> the answer"),
    # the delimiter appears several times: first one splits, the output is malformed
    (WARM_THINK, "<think>a</think> b </think> c", ("repeated-delimiter",), (), "b </think> c", "a"),
    (ZERO_NOTHINK, "<response> a <response> b </response>", ("repeated-delimiter",), (), "a <response> b", ""),
    # a thinking tag in the answer: the thought leaked
    (WARM_THINK, "<think>a</think>\n\nb <think> c", ("think-tag-in-answer",), (), "b <think> c", "a"),
    # the end delimiter is missing: the answer was cut off; the partial answer is kept
    (ZERO_THINK, "<think> p </think> <response> partial ans", ("missing-end-delimiter",), (), "partial ans", "p"),
    # an empty answer
    (WARM_THINK, "<think>\nx\n</think>\n\n   \n", ("empty-answer",), (), "", "x"),
    (ZERO_NOTHINK, "<response>  </response>", ("empty-answer",), (), "", ""),
    (WARM_NOTHINK, "  \n ", ("empty-answer",), (), "", ""),
    # tolerated: a missing start marker (zero models often omit it)
    (ZERO_THINK, "plan </think> <response> ans </response>", (), ("missing-start-marker",), "ans", "plan"),
    (WARM_THINK, "plan\n</think>\n\nans", (), ("missing-start-marker",), "ans", "plan"),
    (ZERO_THINK, "<think> plan <response> ans </response>", (), ("missing-think-end",), "ans", "plan"),
    # tolerated: text after </response> is dropped
    (ZERO_NOTHINK, "<response> ans </response> trailing junk", (), ("text-after-end",), "ans", ""),
    # surrounding whitespace is stripped
    (WARM_THINK, "  <think>\n\n t \n</think>\n\n\n  ans  \n", (), (), "ans", "t"),
    (WARM_NOTHINK, "\n  the whole answer \n", (), (), "the whole answer", ""),
]


@pytest.mark.parametrize("fmt,output,issues,notes,answer,thought", CASES)
def test_documented_rule(fmt, output, issues, notes, answer, thought):
    loose = extract(output, fmt)
    assert (loose.issues, loose.notes, loose.answer, loose.thought) == (issues, notes, answer, thought)
    strict = extract(output, fmt, strict=True)
    assert strict.answer == (NULL_ANSWER if issues else answer)
    assert strict.well_formed is (not issues)


def test_reference_zero_config_with_null_end_delimiter_cuts_at_response_end(tmp_path):
    # convert_base_to_prompted_model.py writes end_delimiter: null; the reference then defaults to </response>
    (tmp_path / LONGCOT_FILE).write_text(json.dumps(
        {"longcot": True, "longcot_delimiter": "<response>", "end_delimiter": None, "start_think_marker": "<think>"}))
    fmt = ThinkingFormat.load(tmp_path)
    assert fmt.name == "zero-think" and fmt.stop_strings == ["</response>"]
    got = extract("<think> t </think> <response> a </response> more", fmt, strict=True)
    assert (got.answer, got.notes) == ("a", ("text-after-end",))


def test_format_output_exact_strings():
    assert format_output(" t ", " a ", WARM_THINK) == "<think>\nt\n</think>\n\na"
    assert format_output("t", "a", WARM_NOTHINK) == "a"
    assert format_output("t", "a", ZERO_THINK) == "<think> t </think> <response> a </response>"
    assert format_output("t", "a", ZERO_NOTHINK) == "<response> a </response>"
    assert format_for("zero", True) is ZERO_THINK and format_for("warm-start", False) is WARM_NOTHINK


def test_sft_messages_append_the_formatted_turn():
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    msgs = sft_messages(prompt, "t", "a", WARM_THINK)
    assert msgs[:2] == prompt
    assert msgs[2] == {"role": "assistant", "content": "<think>\nt\n</think>\n\na"}
    with pytest.raises(ValueError, match="must end with a user turn"):
        sft_messages([{"role": "assistant", "content": "x"}], "t", "a", WARM_THINK)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_longcot_file_round_trip(tmp_path, name):
    fmt = FORMATS[name]
    fmt.save(tmp_path)
    assert ThinkingFormat.load(tmp_path) == fmt
    assert json.loads((tmp_path / LONGCOT_FILE).read_text())["longcot"] is fmt.longcot


def test_directory_without_file_is_a_nothink_model(tmp_path):
    assert ThinkingFormat.load(tmp_path) is WARM_NOTHINK


@pytest.mark.parametrize("content,message", [
    ('{"longcot": true, "longcot_delimiter": "</think>", "end_delimiter": null, "start_think_marker": null, '
     '"delimiter": "x"}', r"unknown field\(s\) \['delimiter'\]"),
    ('{"longcot_delimiter": "</think>"}', "missing required field 'longcot'"),
    ('{"longcot": true, "longcot_delimiter": "</think>"}',
     r"missing required field\(s\) \['end_delimiter', 'start_think_marker'\]"),
    ('{"longcot": "yes"}', "'longcot' must be true or false"),
    ('{"longcot": true, "longcot_delimiter": 3, "end_delimiter": null, "start_think_marker": null}',
     "'longcot_delimiter' must be a string or null"),
    ('{"longcot": true, "longcot_delimiter": "", "end_delimiter": null, "start_think_marker": null}',
     "longcot_delimiter is empty"),
    ('[1, 2]', "must hold a JSON object"),
    ('{"longcot": tru', "not valid JSON"),
])
def test_longcot_file_errors_name_the_problem(tmp_path, content, message):
    (tmp_path / LONGCOT_FILE).write_text(content)
    with pytest.raises(ThinkingFormatError, match=message) as err:
        ThinkingFormat.load(tmp_path)
    assert str(tmp_path) in str(err.value)
