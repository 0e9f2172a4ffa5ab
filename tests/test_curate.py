"""Prompt-mixture curation: malformed rows, real WildChat-IF prompts, determinism, MLflow, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from rlmt.config import FilterSpec, MixtureSpec, SourceSpec
from rlmt.data.curate import curate_mixture

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "curate" / "malformed.jsonl"

# Line of the fixture -> the reason it must be quarantined with (lines 0-4 are valid and kept).
EXPECTED = {
    5: "invalid_json", 6: "invalid_utf8", 7: "missing_field", 8: "wrong_type", 9: "wrong_type",
    10: "non_string_content", 11: "null_content", 12: "no_user_turn", 13: "empty_messages", 14: "invalid_role",
    15: "empty_prompt", 16: "control_characters", 17: "too_long", 18: "duplicate", 19: "language",
    20: "near_duplicate",
}
VALID = {0, 1, 2, 3, 4}


def _fixture_spec(seed: int = 0, **filters) -> MixtureSpec:
    settings = {"keep_multi_turn": True, "max_prompt_tokens": 256, "language": "en", "near_dup_threshold": 0.9,
                **filters}
    return MixtureSpec(sources=[SourceSpec(path=str(FIXTURE), format="chat-jsonl", name="fx")],
                       n_train=None, n_val=2, seed=seed, filters=FilterSpec(**settings))


def _mixture(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(out / "train.parquet"), pl.read_parquet(out / "val.parquet")])


def test_every_malformed_kind_is_quarantined_with_its_reason(tmp_path, tiny_zoo):
    result = curate_mixture(_fixture_spec(), tmp_path, name="fx", tokenizer_dir=tiny_zoo["llama-instruct"])
    quarantine = pl.read_parquet(tmp_path / "quarantine.parquet")
    got = dict(zip(quarantine["source_row"].to_list(), quarantine["reason"].to_list(), strict=True))
    assert got == EXPECTED
    assert len(set(EXPECTED.values())) >= 14
    # The raw row is kept as it was, bad bytes escaped rather than lost.
    raw = dict(zip(quarantine["source_row"].to_list(), quarantine["raw"].to_list(), strict=True))
    assert raw[5].startswith('{"id": "bad-json"') and "\\xff\\xfe" in raw[6] and raw[9] == '["not", "an", "object"]'
    mixture = _mixture(tmp_path)
    assert sorted(int(i.split("-")[1]) for i in mixture["id"]) == sorted(VALID)
    stats = result.stats
    assert stats["in"] == 21 and stats["kept"] == 5 and stats["dropped_total"] == 16
    assert stats["in"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["dropped"]["wrong_type"] == 2 and stats["dropped"]["near_duplicate"] == 1
    assert json.loads((tmp_path / "stats.json").read_text()) == stats
    # Trailing assistant turns are cut, multi-turn context is kept: every prompt ends with a user turn.
    by_id = {r["id"]: r for r in mixture.to_dicts()}
    assert [m["role"] for m in by_id["fx-2"]["messages"]] == ["user"]
    assert [m["role"] for m in by_id["fx-3"]["messages"]] == ["user", "assistant", "user"]
    assert [m["role"] for m in by_id["fx-1"]["messages"]] == ["system", "user"]
    assert all(r["messages"][-1]["role"] == "user" for r in mixture.to_dicts())
    # n_tokens is the chat-templated prompt length in the policy tokenizer.
    from rlmt.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_zoo["llama-instruct"])
    want = len(tok.apply_chat_template(by_id["fx-0"]["messages"], tokenize=True, add_generation_prompt=True,
                                       return_dict=False))
    assert by_id["fx-0"]["n_tokens"] == want


def test_lone_surrogate_is_quarantined_and_nothing_else_changes(tmp_path, tiny_zoo):
    """A JSON escape spelling a lone UTF-16 surrogate is valid JSON in valid UTF-8, yet no UTF-8
    writer takes the string it decodes to: the row is quarantined as invalid_utf8, raw line intact,
    and every other row is decided as before."""
    line = r'{"id": "lone-surrogate", "messages": [{"role": "user", "content": "Tell me about \ud800 the moon."}]}'
    source = tmp_path / "with-surrogate.jsonl"
    source.write_bytes(FIXTURE.read_bytes() + line.encode() + b"\n")
    spec = _fixture_spec().model_copy(update={"sources": [SourceSpec(path=str(source), format="chat-jsonl",
                                                                     name="fx")]})
    result = curate_mixture(spec, tmp_path / "out", name="fx", tokenizer_dir=tiny_zoo["llama-instruct"])
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert dict(zip(quarantine["source_row"].to_list(), quarantine["reason"].to_list(), strict=True)) \
        == {**EXPECTED, 21: "invalid_utf8"}
    assert quarantine.filter(pl.col("source_row") == 21)["raw"].item() == line
    assert sorted(int(i.split("-")[1]) for i in _mixture(tmp_path / "out")["id"]) == sorted(VALID)
    assert result.stats["dropped"]["invalid_utf8"] == 2 and result.stats["in"] == 22


# One valid and one broken row per format: the broken one holds BAD in a string it reads.
FORMAT_ROWS = {
    "chat-jsonl": lambda text: {"messages": [{"role": "user", "content": text}]},
    "rl-parquet": lambda text: {"prompt": [{"role": "user", "content": text}]},
    "tulu-preference": lambda text: {"prompt": text, "chosen": [{"role": "user", "content": text},
                                                                {"role": "assistant", "content": "An answer."}]},
    "ultrafeedback": lambda text: {"prompt": text, "prompt_id": "p"},
    "instruction-jsonl": lambda text: {"instruction": "Translate this sentence.", "input": text},
}
BAD = "@@BAD@@"


@pytest.mark.parametrize("container", ["jsonl", "parquet"])
@pytest.mark.parametrize("fmt", sorted(FORMAT_ROWS))
def test_invalid_text_is_quarantined_in_every_format(tmp_path, fmt, container):
    """A lone surrogate escape (JSONL) or bytes that are not UTF-8 in a string column (Parquet: its
    readers do not check) make an invalid_utf8 row in each format; the valid row is kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [FORMAT_ROWS[fmt]("How far away is the Moon from the Earth?"),
            FORMAT_ROWS[fmt](f"Is {BAD} a word?")]
    if container == "jsonl":
        path = tmp_path / "s.jsonl"
        path.write_text("".join(json.dumps(r).replace(BAD, "\\ud800 and \\udfff") + "\n" for r in rows))
    else:
        path = tmp_path / "s.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path, compression="none", use_dictionary=False,
                       write_statistics=False)
        data = path.read_bytes()
        assert BAD.encode() in data
        path.write_bytes(data.replace(BAD.encode(), b"\xed\xa0\x80 \xff ."))  # same length: a CESU surrogate, 0xff
    spec = MixtureSpec(sources=[SourceSpec(path=str(path), format=fmt, name="s")], n_train=None, n_val=0,
                       filters=FilterSpec(max_prompt_tokens=None, language=None))
    stats = curate_mixture(spec, tmp_path / "out", name="s").stats
    assert stats["kept"] == 1 and stats["dropped_total"] == 1 and stats["dropped"]["invalid_utf8"] == 1
    quarantine = pl.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert quarantine.select("source_row", "reason").rows() == [(1, "invalid_utf8")]
    raw = quarantine["raw"].item()
    if container == "jsonl":  # the line as it was
        assert raw == json.dumps(rows[1]).replace(BAD, "\\ud800 and \\udfff")
    else:  # the row as JSON, its bad bytes escaped
        assert raw == json.dumps(FORMAT_ROWS[fmt]("Is \\xed\\xa0\\x80 \\xff . a word?"), ensure_ascii=False)
    assert _mixture(tmp_path / "out")["messages"].to_list()[0][-1]["content"].endswith(
        "How far away is the Moon from the Earth?")


def test_reading_in_small_batches_changes_nothing(tmp_path, tiny_zoo):
    """Rows stream through in read batches; a duplicate or near-duplicate of a row in an earlier batch
    is still caught, and the files are the ones a single batch gives."""
    tok = tiny_zoo["llama-instruct"]
    one = curate_mixture(_fixture_spec(), tmp_path / "one", name="fx", tokenizer_dir=tok)
    many = curate_mixture(_fixture_spec(), tmp_path / "many", name="fx", tokenizer_dir=tok, batch_rows=4)
    for name in ("train.parquet", "val.parquet", "quarantine.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes(), name
    # Only the token-length shortcut's bookkeeping differs: each batch calibrates on its own rows.
    assert ({k: v for k, v in one.stats.items() if k != "token_length"}
            == {k: v for k, v in many.stats.items() if k != "token_length"})
    assert sum(many.stats["token_length"]["decisions"].values()) == sum(one.stats["token_length"]["decisions"].values())


def test_read_source_returns_only_the_rows_asked_for(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlmt.data.sources import read_source, resolve_source

    prompts = [f"prompt number {i}" for i in range(100)]
    pq.write_table(pa.table({"prompt": prompts, "extra": list(range(100))}), tmp_path / "p.parquet", row_group_size=30)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" + ("\n" if i % 7 == 0 else "")
                                              for i, p in enumerate(prompts)))
    wanted = np.array([99, 3, 29, 30, 31, 3])  # unsorted, repeated, across row-group and batch boundaries
    for path in ("p.parquet", "p.jsonl"):
        src = resolve_source(str(tmp_path / path), "instruction-jsonl", "p", 1.0, None)
        full = pl.concat(read_source(src, batch_rows=8))
        assert full["source_row"].to_list() == list(range(100)), path
        got = pl.concat(read_source(src, batch_rows=8, rows=wanted))
        assert got["source_row"].to_list() == [3, 29, 30, 31, 99], path
        assert [m[0]["content"] for m in got["messages"].to_list()] == [prompts[i] for i in (3, 29, 30, 31, 99)]
        assert list(read_source(src, rows=np.array([], dtype=np.int64))) == []


def test_filters_can_be_switched_off_and_multi_turn_dropped(tmp_path, tiny_zoo):
    spec = _fixture_spec(keep_multi_turn=False, language=None, near_dup_threshold=None, dedup_exact=False,
                         max_prompt_tokens=None)
    stats = curate_mixture(spec, tmp_path, name="fx").stats
    assert stats["dropped"]["multi_turn"] == 1
    assert stats["dropped"]["language"] == stats["dropped"]["near_duplicate"] == stats["dropped"]["duplicate"] == 0
    assert stats["dropped"]["too_long"] == 0
    assert stats["kept"] == 4 + 4  # valid minus multi-turn, plus huge, duplicate, French, near-duplicate
    assert _mixture(tmp_path)["n_tokens"].null_count() == stats["kept"]  # no tokenizer: no token counts


def test_patterns_include_and_exclude(tmp_path):
    spec = _fixture_spec(max_prompt_tokens=None, language=None, dedup_exact=False, exclude_patterns=[r"(?i)lisbon"],
                         include_patterns=[r"(?i)\b(neighbour|lisbon|cook|climate|garden)"])
    stats = curate_mixture(spec, tmp_path, name="fx").stats
    assert stats["dropped"]["excluded_pattern"] == 2  # the Lisbon guide and its near-duplicate
    assert stats["dropped"]["no_include_match"] == 2  # the huge prompt and the French one
    # Exact dedup is off, so the near-duplicate check (Jaccard 1.0) catches the duplicate instead.
    assert stats["dropped"]["near_duplicate"] == 1 and stats["kept"] == 4
    with pytest.raises(ValueError, match=r"exclude_patterns: invalid regex '\('"):
        curate_mixture(_fixture_spec(max_prompt_tokens=None, exclude_patterns=["("]), tmp_path / "x", name="fx")


def test_max_prompt_tokens_needs_a_tokenizer(tmp_path):
    from rlmt.data.curate import CurationError

    with pytest.raises(CurationError, match="max_prompt_tokens=256 needs a tokenizer"):
        curate_mixture(_fixture_spec(), tmp_path, name="fx")


def test_wildchat_if_real_prompts_reconcile(tmp_path, tiny_zoo, data_dir):
    spec = MixtureSpec(sources=[SourceSpec(path="{data_dir}/wildchat-if/train.parquet", name="wildchat-if")],
                       n_train=5000, n_val=250, seed=3)
    result = curate_mixture(spec, tmp_path, name="wildchat-if", tokenizer_dir=tiny_zoo["llama-instruct"],
                            data_dir=data_dir)
    stats = result.stats
    assert stats["in"] == 7544
    assert stats["in"] == stats["kept"] + sum(stats["dropped"].values())
    assert stats["by_source"]["wildchat-if"]["in"] == 7544
    assert stats["sampled"] == {"train": 5000, "val": 250, "tune": 0, "shortfall": 0}
    # The tiny tokenizer is ~2.3 characters a token, so many long WildChat prompts pass 1024 tokens.
    assert 500 < stats["dropped"]["too_long"] < 2000
    assert stats["dropped"]["language"] > 0 and stats["kept"] > 5250
    q = stats["length_quantiles"]
    assert q["sampled_tokens"]["p100"] <= 1024 and q["sampled_tokens"]["p0"] < q["sampled_tokens"]["p50"]
    assert q["kept_chars"]["p50"] > 0
    train, val = pl.read_parquet(tmp_path / "train.parquet"), pl.read_parquet(tmp_path / "val.parquet")
    assert train.columns == ["id", "messages", "source", "n_tokens"]
    assert not set(train["id"]) & set(val["id"])
    assert train["n_tokens"].max() <= 1024 and train["n_tokens"].null_count() == 0
    quarantine = pl.read_parquet(tmp_path / "quarantine.parquet")
    assert quarantine.height == stats["dropped_total"]
    assert json.loads(quarantine["raw"][0])["data_source"] == "wildchat-if"
    assert (tmp_path / "lengths.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_bounds_agree_with_exact_counts(tiny_zoo, data_dir):
    from rlmt.data.token_length import TokenCounter, token_lengths

    frame = (pl.read_parquet(data_dir / "wildchat-if" / "train.parquet").head(1500)
             .select(pl.col("prompt").alias("messages")))
    counter = TokenCounter(tiny_zoo["llama-instruct"])
    n_tokens, too_long, decided = token_lengths(frame, counter, 300)
    exact = counter.count(frame["messages"].to_list())
    assert decided["by_bound_short"] > 300 and decided["by_bound_long"] > 50 and decided["tokenized"] < 1500
    assert np.array_equal(too_long, exact > 300)
    measured = n_tokens >= 0
    assert np.array_equal(n_tokens[measured], exact[measured])


def test_same_seed_same_bytes_other_seed_other_sample(tmp_path, tiny_zoo):
    spec = MixtureSpec(sources=[SourceSpec(path="package:demo_prompts", format="chat-jsonl", name="demo")],
                       n_train=40, n_val=8, seed=5, filters=FilterSpec(keep_multi_turn=True, max_prompt_tokens=512))
    tok = tiny_zoo["llama-instruct"]
    for out in ("a", "b"):
        curate_mixture(spec, tmp_path / out, name="demo", tokenizer_dir=tok)
    for name in ("train.parquet", "val.parquet", "quarantine.parquet", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = spec.model_copy(update={"seed": 6})
    curate_mixture(other, tmp_path / "c", name="demo", tokenizer_dir=tok)
    ids_a = pl.read_parquet(tmp_path / "a" / "train.parquet")["id"].to_list()
    ids_c = pl.read_parquet(tmp_path / "c" / "train.parquet")["id"].to_list()
    assert len(ids_a) == len(ids_c) == 40 and set(ids_a) != set(ids_c)


def test_tuning_split_is_disjoint_and_leaves_val_unchanged(tmp_path, tiny_zoo):
    """n_tune carves a third set from the seeded sample: the three sets are disjoint and sized as asked, and
    without it (n_tune 0, the default) tune.parquet is empty and nothing else changes."""
    spec = MixtureSpec(sources=[SourceSpec(path="package:demo_prompts", format="chat-jsonl", name="demo")],
                       n_train=30, n_val=8, seed=5, filters=FilterSpec(keep_multi_turn=True, max_prompt_tokens=512))
    tok = tiny_zoo["llama-instruct"]
    curate_mixture(spec, tmp_path / "plain", name="demo", tokenizer_dir=tok)
    tuned = spec.model_copy(update={"n_tune": 6})
    result = curate_mixture(tuned, tmp_path / "tuned", name="demo", tokenizer_dir=tok)
    ids = {split: pl.read_parquet(tmp_path / "tuned" / f"{split}.parquet")["id"].to_list()
           for split in ("train", "val", "tune")}
    plain = {split: pl.read_parquet(tmp_path / "plain" / f"{split}.parquet")["id"].to_list() for split in ("train", "val")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["tune"])) == (30, 8, 6)
    assert result.stats["sampled"] == {"train": 30, "val": 8, "tune": 6, "shortfall": 0}
    assert not (set(ids["train"]) & set(ids["val"]) or set(ids["train"]) & set(ids["tune"])
                or set(ids["val"]) & set(ids["tune"]))
    assert len(plain["val"]) == 8 and len(plain["train"]) == 30
    assert pl.read_parquet(tmp_path / "plain" / "tune.parquet").height == 0


def test_weighted_sources_and_formats(tmp_path):
    """Tülu preference parquet + instruction JSONL + UltraFeedback, mixed 3:1:1 by weight."""
    chosen = [[{"role": "user", "content": f"Tulu question number {i} about {w}?"},
               {"role": "assistant", "content": "A long chosen answer " * 20}] for i, w in
              enumerate(["rivers", "stars", "bread", "music", "chess", "rain", "trains", "maps"] * 10)]
    pl.DataFrame({"prompt": [c[0]["content"] for c in chosen], "chosen": chosen, "rejected": chosen}) \
        .write_parquet(tmp_path / "tulu.parquet")
    (tmp_path / "inst.jsonl").write_text("".join(
        json.dumps({"instruction": f"Instruction {i}: describe a {w}", "input": "briefly" if i % 2 else ""}) + "\n"
        for i, w in enumerate(["lake", "hill", "city", "farm", "road"] * 8)))
    uf_prompts = [f"UltraFeedback prompt {i} about {w}" for i, w in enumerate(["tea", "wind", "snow", "sand"] * 10)]
    pl.DataFrame({"prompt": uf_prompts, "prompt_id": [str(i) for i in range(40)]}).write_parquet(tmp_path / "uf.parquet")
    spec = MixtureSpec(sources=[SourceSpec(path=str(tmp_path / "tulu.parquet"), weight=3, name="tulu"),
                                SourceSpec(path=str(tmp_path / "inst.jsonl"), name="inst"),
                                SourceSpec(path=str(tmp_path / "uf.parquet"), format="ultrafeedback", name="uf")],
                       n_train=40, n_val=10, filters=FilterSpec(max_prompt_tokens=None, language=None,
                                                                near_dup_threshold=None))
    stats = curate_mixture(spec, tmp_path / "out", name="mix").stats
    by = stats["by_source"]
    assert {k: v["train"] + v["val"] for k, v in by.items()} == {"tulu": 30, "inst": 10, "uf": 10}
    mixture = _mixture(tmp_path / "out")
    tulu = mixture.filter(pl.col("source") == "tulu")["messages"].to_list()
    assert all(len(m) == 1 and m[0]["role"] == "user" for m in tulu)  # the chosen answer is cut
    inst = {r["id"]: r["messages"][0]["content"] for r in mixture.filter(pl.col("source") == "inst").to_dicts()}
    assert all(c.endswith("\n\nbriefly") == (int(i.split("-")[1]) % 2 == 1) for i, c in inst.items())


def _config_with_fixture(tmp_path: Path) -> Path:
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw["mixtures"]["fx"] = {"sources": [{"path": str(FIXTURE), "format": "chat-jsonl", "name": "fx"}],
                             "n_train": None, "n_val": 2, "seed": 1, "tokenizer_model": "llama-instruct",
                             "filters": {"keep_multi_turn": True, "max_prompt_tokens": 256}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_curate_logs_to_mlflow(tmp_path, tiny_zoo, mlflow_uri):
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from rlmt.cli import app

    config = _config_with_fixture(tmp_path)
    out = tmp_path / "results" / "data" / "mixtures" / "fx"
    result = CliRunner().invoke(app, ["data", "curate", "--config", str(config), "--mixture", "fx", "--out", str(out),
                                      "--tokenizer", str(tiny_zoo["llama-instruct"])])
    assert result.exit_code == 0, result.output
    assert "fx: in=21 kept=5 dropped=16 train=3 val=2" in result.output
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("rlmt").experiment_id])
    assert run.data.tags["rlmt.stage"] == "curate"
    assert run.data.params["seed"] == "1" and json.loads(run.data.params["filters"])["max_prompt_tokens"] == 256
    assert json.loads(run.data.params["sources"])[0]["name"] == "fx"
    assert run.data.metrics["in"] == 21 and run.data.metrics["dropped.invalid_role"] == 1
    assert run.data.tags["rlmt.output.train"].startswith(str(out / "train.parquet") + "@")
    assert run.data.tags["rlmt.input.tokenizer"].startswith(str(tiny_zoo["llama-instruct"]))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"stats.json", "sample.jsonl", "lengths.png"} <= artifacts
    sample = Path(client.download_artifacts(run.info.run_id, "sample.jsonl", str(tmp_path))).read_text().splitlines()
    assert len(sample) == 5 and json.loads(sample[0])["messages"][-1]["role"] == "user"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["fx-train"]

    bad = CliRunner().invoke(app, ["data", "curate", "--config", str(config), "--mixture", "nope", "--out", str(out)])
    assert bad.exit_code == 2 and "unknown mixture 'nope'" in bad.output
    no_tok = CliRunner().invoke(app, ["data", "curate", "--config", str(config), "--mixture", "fx", "--out", str(out)])
    assert no_tok.exit_code == 2 and "needs a tokenizer" in no_tok.output


def _reference_shingles(text: str, words: bool, size: int) -> set:
    """Shingles written out as tuples of words or strings of characters, no hashing: the definition
    the module docstring of rlmt.data.near_duplicates states."""
    tokens = re.findall(r"\w+", text.lower()) if words else list(text)
    if len(tokens) < size:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[k:k + size]) for k in range(len(tokens) - size + 1)}


def _reference_near_duplicates(texts: list[str], threshold: float, word_size: int, char_size: int,
                               char_below: int | None) -> np.ndarray:
    """Brute force over every pair: j is dropped when it is `threshold`-similar to an earlier kept i,
    on characters when both texts are shorter than `char_below`, on words otherwise."""
    by_words = [_reference_shingles(t, True, word_size) for t in texts]
    by_chars = [_reference_shingles(t, False, char_size) for t in texts]
    short = [char_below is not None and len(t) < char_below for t in texts]
    dropped = np.zeros(len(texts), dtype=bool)
    for j in range(len(texts)):
        for i in range(j):
            if dropped[i]:
                continue
            a, b = (by_chars[i], by_chars[j]) if short[i] and short[j] else (by_words[i], by_words[j])
            if a | b and len(a & b) / len(a | b) >= threshold:
                dropped[j] = True
                break
    return dropped


def _variant_corpus(seed: int = 0) -> list[str]:
    """Random texts of 8 to 120 words, every fifth one an edited copy of an earlier text: a word
    changed, a character changed, a word inserted, or two words changed."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(400)]
    texts: list[str] = []
    for k in range(300):
        if k > 10 and k % 5 == 0:
            words = texts[rng.randrange(k)].split()
            at = rng.randrange(len(words))
            edit = k // 5 % 4
            if edit == 0:
                words[at] = "zebra"
            elif edit == 1:
                words[at] = words[at][:-1] + ("x" if words[at][-1] != "x" else "y")
            elif edit == 2:
                words.insert(at, "zebra")
            else:
                words[at] = words[rng.randrange(len(words))] = "zebra"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choices(vocab, k=rng.choice([8, 20, 30, 45, 70, 120]))))
    return texts


@pytest.mark.parametrize("char_below, char_slice", [(None, None), (400, None), (400, 7)])
def test_near_duplicate_index_matches_brute_force_jaccard_across_batches(tmp_path, monkeypatch, char_below,
                                                                        char_slice):
    """The MinHash index, fed in three batches, drops exactly the rows a brute-force exact-Jaccard
    pass over shingles built here (tuples of words, strings of characters) drops; also when the short
    rows' character shingles are built in slices of 7 rows (as 1M-row curations do, in 4,096)."""
    from rlmt.data import near_duplicates
    from rlmt.data.near_duplicates import NearDuplicateIndex

    if char_slice is not None:
        monkeypatch.setattr(near_duplicates, "CHAR_CHUNK_ROWS", char_slice)

    texts = _variant_corpus()
    series = pl.Series(texts)
    index = NearDuplicateIndex(tmp_path, threshold=0.85, num_perm=32, shingle_size=3, char_size=5,
                               char_below=char_below, seed=0)
    for start, n in ((0, 120), (120, 80), (200, 100)):
        index.add(series.slice(start, n))
    got = index.duplicates()
    want = _reference_near_duplicates(texts, 0.85, 3, 5, char_below)
    assert np.array_equal(got, want), (np.flatnonzero(got != want), want.sum())
    short = np.array([len(t) < 400 for t in texts])
    if char_below is None:
        assert 15 < want.sum() and want[~short].sum() > 5
    else:  # both regimes drop rows: short edited copies on characters, long ones on words
        assert want[short].sum() > 15 and want[~short].sum() > 5
        # Characters catch the short edited copies that words miss.
        assert want[short].sum() > _reference_near_duplicates(texts, 0.85, 3, 5, None)[short].sum()


THIRTY_WORDS = ("Could you explain simply why the sky looks blue during the day but turns red and orange at sunset, "
                "and whether the same thing happens on other planets like Mars?")


def test_one_character_variant_of_a_short_prompt_is_a_near_duplicate(tmp_path):
    """At the default threshold (0.9) a one-character variant of a 30-word prompt is dropped as a
    near duplicate; two different short prompts, however alike in form, are both kept. With
    character shingles off (words only) the variant survives: a changed word removes 3 of its 28
    word 3-grams."""
    assert len(THIRTY_WORDS.split()) == 30
    prompts = [THIRTY_WORDS,
               THIRTY_WORDS.replace("during", "durinf"),  # one character
               THIRTY_WORDS.replace("simply", "simpyl"),  # a typo: two characters swapped
               "Write a short poem about the sea at night, with four lines that rhyme and a calm mood.",
               "Write a short poem about the city at night, with four lines that rhyme and a calm mood.",
               "What is 12 times 7?", "What is 12 times 8?"]
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n" for p in prompts))

    def reasons(**filters) -> dict[int, str]:
        spec = MixtureSpec(sources=[SourceSpec(path=str(path), format="chat-jsonl", name="s")], n_train=None, n_val=0,
                           filters=FilterSpec(max_prompt_tokens=None, language=None, **filters))
        out = tmp_path / f"out-{len(filters)}"
        curate_mixture(spec, out, name="s")
        q = pl.read_parquet(out / "quarantine.parquet")
        return dict(zip(q["source_row"].to_list(), q["reason"].to_list(), strict=True))

    assert FilterSpec().near_dup_threshold == 0.9 and FilterSpec().near_dup_char_below == 400
    assert reasons() == {1: "near_duplicate", 2: "near_duplicate"}
    assert reasons(near_dup_char_below=None) == {}


def test_a_pair_is_compared_on_characters_only_when_both_texts_are_short(tmp_path):
    """"sky" -> "skies" in a 30-word text: 0.9+ alike in characters, 0.8 in word 3-grams. The
    pair is a near duplicate only when both texts are under char_below."""
    from rlmt.data.near_duplicates import NearDuplicateIndex

    short = THIRTY_WORDS.lower()
    longer = short.replace("sky", "skies")
    chars = [_reference_shingles(t, False, 5) for t in (short, longer)]
    words = [_reference_shingles(t, True, 3) for t in (short, longer)]
    assert len(chars[0] & chars[1]) / len(chars[0] | chars[1]) > 0.9 > len(words[0] & words[1]) / len(words[0] | words[1])
    for char_below, dropped in ((len(longer) + 1, True), (len(longer), False), (None, False)):
        scratch = tmp_path / str(char_below)
        scratch.mkdir()
        index = NearDuplicateIndex(scratch, threshold=0.9, char_below=char_below)
        index.add(pl.Series([short, longer]))
        assert index.duplicates().tolist() == [False, dropped], char_below
