"""rlmt.jsonl: the one line-numbered JSON-lines reader, and the three readers that stop on a bad line."""

from __future__ import annotations

import json

import pytest

from rlmt.jsonl import INVALID_JSON, INVALID_UTF8, NOT_OBJECT, BadLine, iter_json_lines

GOOD = b'{"id": "a", "text": "caf\xc3\xa9"}\n'  # valid UTF-8 ("café")


def test_bad_lines_are_yielded_with_their_reason_and_line_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(GOOD + b"\n" + b'{"id": "b", "text": "caf\xe9"}\n' + b"{oops\n" + b"[1]\n"
                     + b'{"id": "c", "text": "\\udc00"}\n' + b'{"id": "d", "text": "\\ud83d\\ude00"}\r\n')
    got = list(iter_json_lines(path))
    assert [n for n, _ in got] == [1, 3, 4, 5, 6, 7]  # line 2 is blank
    assert got[0][1] == {"id": "a", "text": "caf\u00e9"} and got[5][1] == {"id": "d", "text": "\U0001F600"}
    bad = {n: row for n, row in got if isinstance(row, BadLine)}
    assert {n: b.reason for n, b in bad.items()} == {3: INVALID_UTF8, 4: INVALID_JSON, 5: NOT_OBJECT, 6: INVALID_UTF8}
    assert bad[3].text == '{"id": "b", "text": "caf\\xe9"}'  # the undecodable byte shown, the text still UTF-8
    assert bad[5].text == "[1]" and "list" in bad[5].detail
    assert "surrogate" in bad[6].detail


@pytest.mark.parametrize("line, message", [
    (b'{"id": "b", "text": "caf\xe9"}\n', r"x.jsonl:2: not valid UTF-8"),
    (b'{"id": \n', r"x.jsonl:2: not valid JSON"),
    (b'"a string"\n', r"x.jsonl:2: not a JSON object \(a str\)"),
    (b'{"id": "c", "text": "\\ud800"}\n', r"x.jsonl:2: a string holds a lone UTF-16 surrogate"),
])
def test_with_an_error_class_a_bad_line_raises_naming_path_and_line(tmp_path, line, message):
    path = tmp_path / "x.jsonl"
    path.write_bytes(GOOD + line)
    with pytest.raises(ValueError, match=message):
        list(iter_json_lines(path, ValueError))


def test_the_three_stopping_readers_name_an_undecodable_line(tmp_path):
    from rlmt.benchmarks.base import BenchmarkError, read_generations
    from rlmt.train.reward_model import read_pairs
    from rlmt.train.runtime import TrainingSetupError
    from rlmt.train.sft import read_sft_rows

    bad = b'{"id": "b", "answer": "caf\xe9"}\n'
    pair = {"id": 1, "prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": "r"}
    sft = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    cases = [(read_pairs, ValueError, pair), (read_sft_rows, TrainingSetupError, sft),
             (read_generations, BenchmarkError, {"id": "a", "answer": "x"})]
    for reader, error, row in cases:
        path = tmp_path / f"{reader.__name__}.jsonl"
        path.write_bytes(json.dumps(row).encode() + b"\n")
        assert len(reader(path)) == 1
        path.write_bytes(json.dumps(row).encode() + b"\n" + bad)
        with pytest.raises(error, match=rf"{reader.__name__}.jsonl:2: not valid UTF-8"):
            reader(path)


def test_a_written_file_reads_back_row_for_row_and_replaces_the_old_one_whole(tmp_path):
    from rlmt.jsonl import write_json_lines

    path = tmp_path / "sub" / "rows.jsonl"
    rows = [{"id": "a", "text": "naïve — ok"}, {"id": "b", "text": "line\u2028sep"}]
    write_json_lines(path, rows)
    assert path.read_bytes() == ('{"id": "a", "text": "naïve — ok"}\n{"id": "b", "text": "line\u2028sep"}\n').encode()
    assert [row for _, row in iter_json_lines(path, ValueError)] == rows
    write_json_lines(path, rows[:1])
    assert [row for _, row in iter_json_lines(path, ValueError)] == rows[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left behind
