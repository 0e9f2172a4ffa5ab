"""Property test: no input aborts curation, and every row is accounted for.

Each example is one mixture of ten sources, the five formats twice: as JSON lines (any bytes, any
JSON value, or a record shaped like the format with hostile strings: lone surrogates, control
characters, nulls, wrong types) and as Parquet (records shaped like the format, some of whose
strings are then made invalid UTF-8 in the file). The filters are drawn too, so the token-length,
language and both near-duplicate paths all run. Whatever the rows, curation must finish with
``in == kept + dropped``, every dropped row in quarantine.parquet with a known reason, and every
kept row a chat prompt (a list of {role, content} ending with a user turn).

Profiles: ``curation`` (the default, what CI runs) is derandomized with a bounded number of
examples, so a run is reproducible and its time known; ``curation-explore`` draws fresh, more
numerous examples to hunt for new failures (minutes: lift the suite's per-test timeout):
``RLMT_HYPOTHESIS_PROFILE=curation-explore pytest tests/test_curate_properties.py --timeout=0``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rlmt.config import FilterSpec, MixtureSpec, SourceSpec
from rlmt.data.curate import curate_mixture
from rlmt.data.filters import REASONS, VALID_ROLES
from rlmt.data.sources import FORMATS

settings.register_profile("curation", max_examples=10, derandomize=True, deadline=None, database=None,
                          print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.large_base_example])
settings.register_profile("curation-explore", parent=settings.get_profile("curation"), max_examples=200,
                          derandomize=False)
PROFILE = settings.get_profile(os.environ.get("RLMT_HYPOTHESIS_PROFILE", "curation"))

WORDS = ("please explain how the water cycle works and why rain falls from clouds in the summer "
         "write a short story about a fox who learns to read books at night").split()
BAD = "@@BAD@@"  # in a Parquet string, replaced by bytes that are not UTF-8 once the file is written
NOT_UTF8 = b"\xed\xa0\x80 \xff ."  # same length as BAD: a CESU-8 surrogate and a stray 0xff

# Strings: English words (rows that pass every filter), anything Unicode has, lone surrogates.
english = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
anything = st.text(st.characters(codec=None), max_size=30)
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
hostile = st.one_of(english, english, anything,
                    st.tuples(english, surrogates, english).map(" ".join),
                    st.tuples(english, st.sampled_from(["\x00", "\x07", "\ufffd", "\u2028", "\r", "\t"])).map("".join))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile | st.sampled_from(
        ["messages", "prompt", "chosen", "instruction", "input", "role", "content"]), inner, max_size=4),
    max_leaves=12)
roles = st.sampled_from(["user", "user", "assistant", "system", "narrator", None])


def message(content: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"role": roles, "content": content | st.none()})


def conversation(content: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(message(content), max_size=4) | st.none()


def shaped(fmt: str, content: st.SearchStrategy) -> st.SearchStrategy:
    """A record with the fields `fmt` reads, any of them null or hostile."""
    conv = conversation(content)
    text = content | st.none()
    return {
        "chat-jsonl": st.fixed_dictionaries({"messages": conv}),
        "rl-parquet": st.fixed_dictionaries({"prompt": conv}),
        "tulu-preference": st.fixed_dictionaries({"prompt": text, "chosen": conv}),
        "ultrafeedback": st.fixed_dictionaries({"prompt": text}),
        "instruction-jsonl": st.fixed_dictionaries({"instruction": text, "input": text}),
    }[fmt]


def good(fmt: str) -> st.SearchStrategy:
    """A record of the format that passes the structural checks (English text; any later turns)."""
    turns = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), english), max_size=3)
    conv = st.tuples(turns, english).map(lambda t: [{"role": r, "content": c} for r, c in t[0]]
                                         + [{"role": "user", "content": t[1]}])
    return {
        "chat-jsonl": st.fixed_dictionaries({"messages": conv}),
        "rl-parquet": st.fixed_dictionaries({"prompt": conv}),
        "tulu-preference": st.fixed_dictionaries({"prompt": english, "chosen": conv}),
        "ultrafeedback": st.fixed_dictionaries({"prompt": english}),
        "instruction-jsonl": st.fixed_dictionaries({"instruction": english, "input": english | st.just("")}),
    }[fmt]


def with_copies(rows: st.SearchStrategy, variant) -> st.SearchStrategy:
    """Rows plus copies of some of them, exact or a variant (duplicates and near duplicates)."""
    def add(drawn):
        rows, picks = drawn
        return rows + [rows[i % len(rows)] if exact else variant(rows[i % len(rows)]) for i, exact in picks if rows]
    return st.tuples(rows, st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=3)).map(add)


def jsonl_lines(fmt: str) -> st.SearchStrategy:
    """Lines of a JSONL source: raw bytes, a JSON value, a record of the format's shape with hostile
    strings, or a good record (serialized with or without ASCII escapes; a surrogate then is an
    escape, or CESU-8 bytes), and copies of some."""
    value = json_values | shaped(fmt, hostile | st.integers()) | good(fmt) | good(fmt)
    encoded = st.tuples(value, st.booleans()).map(
        lambda v: json.dumps(v[0], ensure_ascii=v[1]).encode("utf-8", errors="surrogatepass"))
    line = (st.binary(max_size=60) | encoded | encoded | encoded).map(lambda b: b.replace(b"\n", b" "))
    return with_copies(st.lists(line, max_size=8), lambda b: b.replace(b" the ", b" a ", 1))


def parquet_rows(fmt: str) -> st.SearchStrategy:
    """Records of the format's shape (one consistent schema), some strings marked to be made invalid UTF-8."""
    content = english | st.text(st.characters(codec="utf-8"), max_size=20) | english.map(lambda t: f"{t} {BAD}")
    rows = st.lists(shaped(fmt, content) | good(fmt), min_size=1, max_size=6)
    return with_copies(rows, lambda r: json.loads(json.dumps(r).replace(" the ", " a ", 1)))


filter_specs = st.builds(
    FilterSpec,
    keep_multi_turn=st.booleans(),
    max_prompt_tokens=st.sampled_from([None, 48, 512]),
    language=st.sampled_from([None, "en"]),
    dedup_exact=st.booleans(),
    near_dup_threshold=st.sampled_from([None, 0.5, 0.9]),
    near_dup_char_below=st.sampled_from([None, 40, 400]),
)
sources = st.fixed_dictionaries({
    **{f"{fmt}.jsonl": jsonl_lines(fmt) for fmt in FORMATS},
    **{f"{fmt}.parquet": parquet_rows(fmt) for fmt in FORMATS},
})


def _write(directory: Path, drawn: dict) -> dict[str, int]:
    """Write every source; returns its name -> rows it holds (a blank JSONL line is not a row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {}
    for filename, content in drawn.items():
        path = directory / filename
        if filename.endswith(".jsonl"):
            path.write_bytes(b"".join(line + b"\n" for line in content))
            rows[filename] = sum(1 for line in content if line.strip())
        else:
            pq.write_table(pa.Table.from_pylist(content), path, compression="none", use_dictionary=False,
                           write_statistics=False)
            path.write_bytes(path.read_bytes().replace(BAD.encode(), NOT_UTF8))
            rows[filename] = len(content)
    return rows


def _first_line_reason(line: bytes) -> str | None:
    """The read-stage reason a line must get, known without the reader: not UTF-8, not JSON, not an object."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return "invalid_json"
    return None if isinstance(value, dict) else "wrong_type"


@settings(PROFILE)
@given(drawn=sources, fs=filter_specs)
def test_no_input_aborts_curation_and_every_row_is_accounted_for(tiny_zoo, drawn, fs):
    with tempfile.TemporaryDirectory(prefix="rlmt-prop-") as tmp:
        tmp = Path(tmp)
        expected_rows = _write(tmp, drawn)
        spec = MixtureSpec(sources=[SourceSpec(path=str(tmp / name), format=name.rsplit(".", 1)[0], name=name)
                                    for name in drawn],
                           n_train=None, n_val=1, seed=0, filters=fs)
        tokenizer = tiny_zoo["llama-instruct"] if fs.max_prompt_tokens is not None else None
        stats = curate_mixture(spec, tmp / "out", name="prop", tokenizer_dir=tokenizer).stats

        # Seen with --hypothesis-show-statistics: which reasons the examples reach.
        event(f"kept rows: {stats['kept'] > 0}")
        for reason in (r for r, n in stats["dropped"].items() if n):
            event(f"dropped: {reason}")
        assert stats["in"] == sum(expected_rows.values())
        assert stats["in"] == stats["kept"] + stats["dropped_total"] == stats["kept"] + sum(stats["dropped"].values())
        for name, n in expected_rows.items():
            assert stats["by_source"][name]["in"] == n, name

        # Every dropped row is in quarantine, once, with a known reason; every kept row is in the mixture.
        quarantine = pl.read_parquet(tmp / "out" / "quarantine.parquet")
        assert quarantine.height == stats["dropped_total"]
        assert quarantine["reason"].null_count() == 0 and set(quarantine["reason"]) <= set(REASONS)
        dropped = set(zip(quarantine["source"].to_list(), quarantine["source_row"].to_list(), strict=True))
        assert len(dropped) == quarantine.height
        mixture = pl.concat([pl.read_parquet(tmp / "out" / f) for f in ("train.parquet", "val.parquet")])
        assert mixture.height == stats["kept"]
        kept = {(source, int(i.rsplit("-", 1)[1])) for source, i in zip(mixture["source"], mixture["id"], strict=True)}
        assert len(kept) == mixture.height and not kept & dropped
        assert kept | dropped == {(name, r) for name, n in expected_rows.items() for r in range(n)}

        # Lines the reader cannot take as records carry the reason the line itself shows.
        reasons = dict(zip(zip(quarantine["source"], quarantine["source_row"], strict=True), quarantine["reason"],
                           strict=True))
        for name, content in drawn.items():
            if name.endswith(".jsonl"):
                for row, line in enumerate(line for line in content if line.strip()):
                    if (want := _first_line_reason(line)) is not None:
                        assert reasons.get((name, row)) == want, (name, row, line)
            else:  # every field of these records is read: one with bytes that are not UTF-8 is invalid_utf8
                for row, record in enumerate(content):
                    assert (reasons.get((name, row)) == "invalid_utf8") == (BAD in json.dumps(record)), (name, row)

        # Kept rows are chat prompts: a list of {role, content} strings ending with a user turn.
        for messages in mixture["messages"].to_list():
            assert isinstance(messages, list) and messages
            assert all(set(m) == {"role", "content"} and m["role"] in VALID_ROLES and isinstance(m["content"], str)
                       for m in messages)
            assert messages[-1]["role"] == "user" and messages[-1]["content"].strip()
            assert fs.keep_multi_turn or sum(m["role"] == "user" for m in messages) == 1
        for content in (m["content"] for ms in mixture["messages"].to_list() for m in ms):
            content.encode("utf-8")  # nothing unencodable got through
