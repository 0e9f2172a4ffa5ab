"""Prompt-mixture curation: malformed rows, real WildChat-IF prompts, determinism, MLflow, the CLI."""

from __future__ import annotations

import json
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
    assert stats["sampled"] == {"train": 5000, "val": 250, "shortfall": 0}
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


def test_near_duplicate_index_matches_exact_jaccard_across_batches(tmp_path):
    """The MinHash index, fed in three batches, drops exactly the rows a brute-force exact-Jaccard
    pass drops (pairs far above or below the threshold, where banding cannot miss)."""
    import random

    from rlmt.data.near_duplicates import NearDuplicateIndex, shingles

    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(400)]
    texts: list[str] = []
    for i in range(300):
        if i > 10 and i % 5 == 0:  # one word changed in a 60-word text: Jaccard ~0.9+
            words = texts[rng.randrange(i)].split()
            words[rng.randrange(len(words))] = "zebra"
            texts.append(" ".join(words))
        else:
            texts.append(" ".join(rng.choices(vocab, k=60)))
    series = pl.Series(texts)
    index = NearDuplicateIndex(tmp_path, num_perm=32, shingle_size=3, seed=0)
    for start in (0, 120, 200):
        index.add(series.slice(start, {0: 120, 120: 80, 200: 100}[start]))
    got = index.duplicates(0.85)

    hashes, offsets = shingles(series, 3)
    sets = [set(hashes[offsets[k]:offsets[k + 1]].tolist()) for k in range(len(texts))]
    want = np.zeros(len(texts), dtype=bool)
    for j in range(len(texts)):
        want[j] = any(not want[i] and len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= 0.85 for i in range(j))
    assert want.sum() > 20
    assert np.array_equal(got, want)
