"""Prompt-mixture curation: raw sources -> filtered, deduplicated, sampled train/val prompts.

:func:`curate_mixture` is the one stage function behind ``rlmt data curate``. It reads every source
(:mod:`rlmt.data.sources`), applies the filters in the order of :data:`rlmt.data.filters.REASONS`
(each row is counted under its first failing check), samples ``n_train + n_val + n_tune`` prompts
with the mixture's seed and source weights, and writes ``results/data/mixtures/<name>/``:

``train.parquet``/``val.parquet``/``tune.parquet`` (``id``, ``messages``, ``source``, ``n_tokens``; in sample
order the first ``n_val`` rows are val, the next ``n_tune`` tune, the rest train: three disjoint sets; the
sample is drawn for the three sizes together, so setting ``n_tune`` resamples val and train, and the default
``n_tune: 0`` writes an empty ``tune.parquet`` and the same train and val as before the split existed),
``quarantine.parquet`` (``source``, ``source_row``, ``raw`` row as JSON, ``reason``), ``stats.json``
and ``lengths.png``. Nothing is dropped without a reason: ``in == kept + sum(dropped)`` is asserted
here, overall and per source. The same inputs and seed give byte-identical files.

Memory stays flat in the number of rows: :class:`rlmt.data.scan.SourceScan` reads each source once,
a batch at a time, keeping a few numbers per row; the sampled conversations and the raw dropped
rows are read again from the sources at the end.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rlmt.config import MixtureSpec
from rlmt.data import filters
from rlmt.data.scan import SourceScan, StageClock
from rlmt.data.sources import BATCH_ROWS, ResolvedSource, raw_rows, read_source, resolve_source

QUANTILES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0)
MIXTURE_SCHEMA = {"id": pl.String, "messages": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
                  "source": pl.String, "n_tokens": pl.Int64}


class CurationError(RuntimeError):
    """Curation cannot produce the requested mixture (bad settings, missing tokenizer)."""


@dataclass
class CurateResult:
    out_dir: Path
    stats: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    sample: list[dict[str, Any]] = field(default_factory=list)


def curate_mixture(spec: MixtureSpec, out_dir: str | Path, *, name: str, tokenizer_dir: str | Path | None = None,
                   data_dir: str | Path | None = None, batch_rows: int = BATCH_ROWS) -> CurateResult:
    """Curate one mixture into `out_dir`; see the module docstring for the files.

    `batch_rows` (rows read at a time) trades memory for per-batch overhead; the outputs do not
    depend on it, except the token-length shortcut's counts in stats.json.
    """
    out_dir = Path(out_dir)
    fs = spec.filters
    if fs.max_prompt_tokens is not None and tokenizer_dir is None:
        raise CurationError(f"mixture {name!r}: filters.max_prompt_tokens={fs.max_prompt_tokens} needs a tokenizer "
                            "(pass --tokenizer with the prepared tokenizer_model directory)")
    filters.check_patterns(fs.include_patterns, "include_patterns")
    filters.check_patterns(fs.exclude_patterns, "exclude_patterns")
    sources = [resolve_source(s.path, s.format, s.name, s.weight, Path(data_dir) if data_dir else None)
               for s in spec.sources]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise CurationError(f"mixture {name!r}: two sources share the label {names}; give each a distinct 'name'")

    counter = None
    if tokenizer_dir is not None:
        from rlmt.data.token_length import TokenCounter

        counter = TokenCounter(tokenizer_dir)
    clock = StageClock()
    with tempfile.TemporaryDirectory(prefix="rlmt-curate-") as scratch:
        scan = SourceScan(fs, counter, spec.seed, Path(scratch), clock, batch_rows=batch_rows)
        frame = scan.run(sources)
        frame = _mark(frame, scan.near_duplicate_rows(), filters.NEAR_DUPLICATE)
    length_info: dict[str, Any] = {}
    if counter is not None and fs.max_prompt_tokens is not None:
        length_info = {"decisions": {k: scan.length_decisions[k] for k in ("by_bound_short", "by_bound_long",
                                                                             "tokenized")},
                       "bounds": vars(counter.bounds) if counter.bounds else None}

    kept = frame.filter(pl.col("reason").is_null())
    with clock("sample"):
        order, shortfall = _sample(kept, sources, spec)
        picked = _read_rows(sources, frame, order, fs.keep_multi_turn)
        n_val = min(spec.n_val, picked.height)
        n_tune = min(spec.n_tune, picked.height - n_val)
        train, val, tune = (_finish(part, counter) for part in
                            (picked.slice(n_val + n_tune), picked.head(n_val), picked.slice(n_val, n_tune)))

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"train": out_dir / "train.parquet", "val": out_dir / "val.parquet", "tune": out_dir / "tune.parquet",
             "quarantine": out_dir / "quarantine.parquet", "stats": out_dir / "stats.json",
             "figure": out_dir / "lengths.png"}
    train.write_parquet(files["train"], statistics=False)
    val.write_parquet(files["val"], statistics=False)
    tune.write_parquet(files["tune"], statistics=False)
    with clock("quarantine"):
        _write_quarantine(frame, sources, files["quarantine"])
    clock.log()
    stats = _stats(name, spec, sources, frame, kept, train, val, shortfall, length_info, tune)
    files["stats"].write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    _figure(kept, train, val, fs.max_prompt_tokens, files["figure"], name)
    sample = pl.concat([train, val]).head(20).to_dicts()
    return CurateResult(out_dir=out_dir, stats=stats, files=files, sample=sample)


# ---------------------------------------------------------------------- stages


def _mark(frame: pl.DataFrame, rows: np.ndarray, reason: str) -> pl.DataFrame:
    if len(rows) == 0:
        return frame
    hit = pl.col("_i").is_in(pl.Series(rows, dtype=pl.Int64).implode())
    return frame.with_columns(pl.when(hit & pl.col("reason").is_null()).then(pl.lit(reason))
                              .otherwise(pl.col("reason")).alias("reason"))


def _quotas(available: list[int], weights: list[float], total: int) -> list[int]:
    """Split `total` over sources by weight (largest remainder), moving what a source lacks to the others."""
    quota = [0] * len(available)
    open_ = [k for k, a in enumerate(available) if a > 0]
    remaining = min(total, sum(available))
    while remaining > 0 and open_:
        wsum = sum(weights[k] for k in open_)
        shares = {k: remaining * weights[k] / wsum for k in open_}
        give = {k: min(math.floor(shares[k]), available[k] - quota[k]) for k in open_}
        left = remaining - sum(give.values())
        for k in sorted(open_, key=lambda k: (-(shares[k] - math.floor(shares[k])), k)):
            if left == 0:
                break
            if quota[k] + give[k] < available[k]:
                give[k] += 1
                left -= 1
        for k, g in give.items():
            quota[k] += g
        remaining = min(total, sum(available)) - sum(quota)
        open_ = [k for k in open_ if quota[k] < available[k]]
    return quota


def _sample(kept: pl.DataFrame, sources: list[ResolvedSource], spec: MixtureSpec) -> tuple[np.ndarray, int]:
    """Seeded sample of n_train + n_val + n_tune kept rows by source weight: their ``_i`` in sample order
    (the first n_val are the validation rows, the next n_tune the tuning rows), and how many were wanted
    but not available."""
    rng = np.random.default_rng(spec.seed)
    kept = kept.sort("_i")
    per_source = [kept.filter(pl.col("_src") == k)["_i"].to_numpy() for k in range(len(sources))]
    wanted = sum(len(p) for p in per_source) if spec.n_train is None else spec.n_train + spec.n_val + spec.n_tune
    quota = _quotas([len(p) for p in per_source], [s.weight for s in sources], wanted)
    chosen = np.concatenate([rng.permutation(p)[:q] for p, q in zip(per_source, quota, strict=True)]
                            or [np.zeros(0, dtype=np.int64)])
    chosen = rng.permutation(chosen).astype(np.int64)
    return chosen, max(0, wanted - len(chosen))


def _read_rows(sources: list[ResolvedSource], frame: pl.DataFrame, order: np.ndarray,
               keep_multi_turn: bool) -> pl.DataFrame:
    """The rows ``order`` (``_i``, in that order) with their conversations, read again from the sources.

    Each one passed every check on the first read; if one no longer does, the source changed under us.
    """
    want = (pl.DataFrame({"_i": order, "_pos": np.arange(len(order), dtype=np.int64)})
            .join(frame.select("_i", "_src", "source_row", "n_tokens"), on="_i", how="left"))
    parts = [pl.DataFrame(schema={"_src": pl.Int32, "source_row": pl.Int64, "source": pl.String,
                                  "messages": MIXTURE_SCHEMA["messages"], "reason": pl.String})]
    for k, src in enumerate(sources):
        rows = np.sort(want.filter(pl.col("_src") == k)["source_row"].to_numpy())
        for batch in read_source(src, rows=rows):
            checked = filters.structure(batch, keep_multi_turn)
            parts.append(checked.select(pl.lit(k, dtype=pl.Int32).alias("_src"), "source_row", "source", "messages",
                                        "reason"))
    got = pl.concat(parts)
    if got.height != want.height or got["reason"].null_count() != got.height:
        raise CurationError("a source changed while it was being curated: the sampled rows read back differently "
                            f"({got.height} of {want.height} found, {got['reason'].null_count()} still valid)")
    return want.join(got.drop("reason"), on=["_src", "source_row"], how="left").sort("_pos")


def _finish(part: pl.DataFrame, counter) -> pl.DataFrame:
    """Final mixture columns; rows whose length came from a bound are tokenized exactly now."""
    n_tokens = part["n_tokens"].to_numpy().copy()
    if counter is not None:
        missing = np.flatnonzero(n_tokens < 0)
        if len(missing):
            n_tokens[missing] = counter.count(part["messages"].gather(missing).to_list())
    names = part["source"]
    ids = part.select(pl.concat_str(pl.col("source"), pl.lit("-"), pl.col("source_row").cast(pl.String)))
    out = pl.DataFrame({"id": ids.to_series(), "messages": part["messages"], "source": names,
                        "n_tokens": pl.Series(n_tokens, dtype=pl.Int64) if counter is not None
                        else pl.Series([None] * part.height, dtype=pl.Int64)})
    return out.cast(MIXTURE_SCHEMA)  # type: ignore[arg-type]


def _write_quarantine(frame: pl.DataFrame, sources: list[ResolvedSource], path: Path) -> None:
    """Write every dropped row (source, source_row, raw JSON, reason), one source batch at a time.

    The raw rows are re-read from the sources and streamed into the Parquet file, so memory holds
    one batch of them, not all of them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("source", pa.string()), ("source_row", pa.int64()), ("raw", pa.string()),
                        ("reason", pa.string())])
    dropped = (frame.filter(pl.col("reason").is_not_null()).select("_src", "source_row", "reason")
               .sort("_src", "source_row"))
    with pq.ParquetWriter(path, schema, write_statistics=False) as writer:
        for k, src in enumerate(sources):
            part = dropped.filter(pl.col("_src") == k)
            rows = part["source_row"].to_list()
            reasons = dict(zip(rows, part["reason"].to_list(), strict=True))
            written = 0
            for chunk in raw_rows(src, rows):
                ids = sorted(chunk)
                written += len(ids)
                writer.write_table(pa.table({
                    "source": pa.array([src.name] * len(ids), pa.string()),
                    "source_row": pa.array(ids, pa.int64()),
                    "raw": pa.array([chunk[i] for i in ids], pa.string()),
                    "reason": pa.array([reasons[i] for i in ids], pa.string())}, schema=schema))
            if written != len(rows):  # every dropped row must be in quarantine: nothing is lost
                raise CurationError(f"{src.location}: {len(rows) - written} dropped row(s) could not be read back "
                                    "for quarantine.parquet")


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {}
    qs = np.quantile(values, QUANTILES)
    return {f"p{int(q * 100)}": float(round(v, 2)) for q, v in zip(QUANTILES, qs, strict=True)}


def _counts(frame: pl.DataFrame) -> dict[str, Any]:
    reasons = frame["reason"].drop_nulls().value_counts()
    by_reason = dict(zip(reasons["reason"].to_list(), reasons["count"].to_list(), strict=True))
    dropped = {r: int(by_reason.get(r, 0)) for r in filters.REASONS}
    n_in, n_kept = frame.height, int(frame["reason"].is_null().sum())
    if n_in != n_kept + sum(dropped.values()):
        raise AssertionError(f"curation lost rows: in={n_in} kept={n_kept} dropped={sum(dropped.values())} "
                             f"(unknown reasons: {set(by_reason) - set(filters.REASONS)})")
    return {"in": n_in, "kept": n_kept, "dropped": dropped, "dropped_total": sum(dropped.values())}


def _stats(name: str, spec: MixtureSpec, sources: list[ResolvedSource], frame: pl.DataFrame, kept: pl.DataFrame,
           train: pl.DataFrame, val: pl.DataFrame, shortfall: int, length_info: dict[str, Any],
           tune: pl.DataFrame) -> dict[str, Any]:
    chars = kept["chars"].to_numpy()
    out_tokens = pl.concat([train, val, tune])["n_tokens"].drop_nulls().to_numpy()
    by_source = {}
    for k, src in enumerate(sources):
        src_name = src.name
        counts = _counts(frame.filter(pl.col("_src") == k))
        counts["train"] = int((train["source"] == src_name).sum())
        counts["val"] = int((val["source"] == src_name).sum())
        counts["tune"] = int((tune["source"] == src_name).sum())
        by_source[src_name] = counts
    return {
        "mixture": name,
        **_counts(frame),
        "sampled": {"train": train.height, "val": val.height, "tune": tune.height, "shortfall": shortfall},
        "seed": spec.seed,
        "by_source": by_source,
        "length_quantiles": {"kept_chars": _quantiles(chars), "sampled_tokens": _quantiles(out_tokens)},
        "token_length": length_info,
        "invariant": "in == kept + dropped_total",
    }


def _figure(kept: pl.DataFrame, train: pl.DataFrame, val: pl.DataFrame, limit: int | None, path: Path,
            name: str) -> None:
    """Two histograms a person can read at a glance: characters of all kept prompts, tokens of the sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chars = kept["chars"].to_numpy()
    tokens = pl.concat([train, val])["n_tokens"].drop_nulls().to_numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].hist(chars, bins=50, color="#4878a8")
    axes[0].set(title=f"{name}: kept prompts ({len(chars):,})", xlabel="characters", ylabel="prompts")
    axes[1].hist(tokens, bins=50, color="#d08838")
    axes[1].set(title=f"sampled train+val ({len(tokens):,})", xlabel="policy tokens (chat template)")
    if limit is not None:
        axes[1].axvline(limit, color="black", linestyle="--", label=f"max_prompt_tokens={limit}")
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


# ---------------------------------------------------------------------- tracking


def log_curation(result: CurateResult, spec: MixtureSpec) -> None:
    """Record a curation in the active MLflow run: settings, counts, the stats file, a sample, digests."""
    import tempfile

    import mlflow

    from rlmt.tracking import _retry, log_dataset_input, log_outputs, log_params

    # Whole blocks as JSON: rlmt.tracking.redact drops any key containing "token" (max_prompt_tokens).
    log_params({"sources": json.dumps([s.model_dump() for s in spec.sources]),
                "filters": json.dumps(spec.filters.model_dump(), sort_keys=True),
                "seed": spec.seed, "n_train": spec.n_train, "n_val": spec.n_val, "n_tune": spec.n_tune,
                "length_model": spec.tokenizer_model})
    stats = result.stats
    metrics = {"in": stats["in"], "kept": stats["kept"], "dropped_total": stats["dropped_total"],
               "train": stats["sampled"]["train"], "val": stats["sampled"]["val"], "tune": stats["sampled"]["tune"]}
    metrics.update({f"dropped.{r}": n for r, n in stats["dropped"].items()})
    for kind, qs in stats["length_quantiles"].items():
        metrics.update({f"{kind}.{q}": v for q, v in qs.items()})
    _retry(mlflow.log_metrics, metrics)
    _retry(mlflow.log_artifact, str(result.files["stats"]))
    _retry(mlflow.log_artifact, str(result.files["figure"]))
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.jsonl"
        sample_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.sample))
        _retry(mlflow.log_artifact, str(sample_path))
    log_outputs({k: v for k, v in result.files.items() if k != "figure"})
    # The file's digest, as the training runs that consume it log it: one dataset in the UI.
    log_dataset_input(result.files["train"], f"{stats['mixture']}-train", "training")
