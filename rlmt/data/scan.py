"""One pass over the raw sources that decides every per-row check, a read batch at a time.

Curation must see a million rows on a laptop. So a conversation is held only while its read batch
(:data:`rlmt.data.sources.BATCH_ROWS` rows) is being checked; what survives the pass is a few
numbers per row (:data:`ROW_COLUMNS`), the near-duplicate index's signatures, and nothing else. The
conversations of the rows that end up sampled are read again afterwards
(:func:`rlmt.data.sources.read_source` with ``rows=``), as are the raw dropped rows for
quarantine.

Every check keeps its meaning from :mod:`rlmt.data.filters`: a row is counted under the first
reason of :data:`rlmt.data.filters.REASONS` that applies, and the checks see the rows in source
order, so streaming gives the decisions a whole-table pass would:

* structure, patterns, control characters: per row;
* exact duplicates: the first occurrence of a text wins, across batches (:class:`ExactDuplicates`);
* token length: per row; the bounds that spare most rows the tokenizer are calibrated on every
  batch and only ever widen (:meth:`rlmt.data.token_length.TokenCounter.calibrate`);
* language: per row, in a second thread while the tokenizer runs;
* near duplicates: the one global check. Each batch's surviving rows are added to a
  :class:`rlmt.data.near_duplicates.NearDuplicateIndex`, decided once the pass is over (character
  n-grams for two short prompts, word n-grams otherwise: see that module).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from rlmt.config import FilterSpec
from rlmt.data import filters
from rlmt.data.sources import BATCH_ROWS, ResolvedSource, count_rows, read_source

log = logging.getLogger(__name__)

ROW_COLUMNS = {"_i": pl.Int64, "_src": pl.Int32, "source_row": pl.Int64, "reason": pl.String, "chars": pl.Int64,
               "n_tokens": pl.Int64}


class StageClock:
    """Seconds per stage, summed over batches and logged once (stats.json must stay byte-identical)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.peak_kib, self.peak_stage = _max_rss_kib(), "start"

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - start
            rss = _max_rss_kib()
            if rss > self.peak_kib:  # the stage during which the process's peak last rose
                self.peak_kib, self.peak_stage = rss, stage

    def log(self) -> None:
        for stage, seconds in self.seconds.items():
            log.info("curate: %s took %.1fs", stage, seconds)
        peak = _max_rss_kib() / 1024**2
        log.info("curate: peak RSS so far %.2f GB (last raised during: %s)", peak, self.peak_stage)


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


class SourceScan:
    """Reads the sources once and decides every check but near-duplicates row by row.

    Args:
        fs: the mixture's filters.
        counter: a :class:`rlmt.data.token_length.TokenCounter` (required for ``max_prompt_tokens``).
        seed: the mixture's seed (token-length calibration samples, MinHash permutations).
        scratch_dir: where the near-duplicate index spills shingle hashes.
        batch_rows: rows per read batch: memory grows with it, per-batch overhead shrinks. The
            decisions do not depend on it.
    """

    def __init__(self, fs: FilterSpec, counter: Any, seed: int, scratch_dir: Path,
                 clock: StageClock | None = None, batch_rows: int = BATCH_ROWS) -> None:
        self.fs, self.counter, self.seed, self.batch_rows = fs, counter, seed, batch_rows
        self.clock = clock or StageClock()
        self.dedup = filters.ExactDuplicates() if fs.dedup_exact else None
        self.detector = None
        if fs.language is not None:
            from rlmt.data.language import LanguageDetector

            self.detector = LanguageDetector()
        self.near = None
        if fs.near_dup_threshold is not None:
            from rlmt.data.near_duplicates import NearDuplicateIndex

            self.near = NearDuplicateIndex(scratch_dir, threshold=fs.near_dup_threshold,
                                           num_perm=fs.near_dup_num_perm, shingle_size=fs.near_dup_shingle_words,
                                           char_size=fs.near_dup_shingle_chars, char_below=fs.near_dup_char_below,
                                           seed=seed)
        self._near_rows: list[np.ndarray] = []  # _i of the rows added to the index, in order
        self.length_decisions: Counter[str] = Counter()
        self._batches = 0

    def run(self, sources: list[ResolvedSource]) -> pl.DataFrame:
        """One frame of :data:`ROW_COLUMNS` for every row of every source, in order (``_i``)."""
        parts = [pl.DataFrame(schema=ROW_COLUMNS)]
        start = 0
        for k, src in enumerate(sources):
            total = count_rows(src)
            bar = tqdm(total=total, desc=f"curate {src.name}", unit="row", delay=2)  # quiet on small sources
            batches = read_source(src, self.batch_rows)
            while True:
                with self.clock("read"):
                    batch = next(batches, None)
                if batch is None:
                    break
                parts.append(self._check(batch, k, start))
                start += batch.height
                bar.update(batch.height)
            bar.close()
        return pl.concat(parts, rechunk=True)

    def near_duplicate_rows(self) -> np.ndarray:
        """``_i`` of the rows the near-duplicate index drops (empty when that check is off)."""
        if self.near is None:
            return np.zeros(0, dtype=np.int64)
        with self.clock("near duplicates"):
            dropped = self.near.duplicates()
        rows = np.concatenate(self._near_rows) if self._near_rows else np.zeros(0, dtype=np.int64)
        return rows[dropped]

    # ------------------------------------------------------------------ one batch

    def _check(self, batch: pl.DataFrame, k: int, start: int) -> pl.DataFrame:
        fs = self.fs
        n = batch.height
        with self.clock("structure + patterns"):
            frame = filters.structure(batch, fs.keep_multi_turn).drop("error", "source").with_columns(
                pl.int_range(start, start + n, dtype=pl.Int64).alias("_i"), pl.lit(k, dtype=pl.Int32).alias("_src"))
            frame = filters.patterns(frame, fs.include_patterns, fs.exclude_patterns)
            # The joined text has served its checks; its length is all the stats and figure need.
            frame = frame.with_columns(pl.col("text").str.len_chars().cast(pl.Int64).alias("chars")).drop("text")
        if self.dedup is not None or self.near is not None:
            with self.clock("exact duplicates"):
                frame = filters.with_normalized_text(frame)
                if self.dedup is not None:
                    frame = self.dedup.mark(frame)

        # Token length and language are independent per-row checks, and their heavy parts run in
        # native code (the Rust tokenizer releases the GIL, fastText does not), so language runs in
        # a second thread on the same rows. A row that fails both is counted as too long, the
        # earlier reason, exactly as if the checks ran one after the other.
        rows = _eligible(frame)
        foreign = None
        with self.clock("token length + language"), ThreadPoolExecutor(max_workers=1) as pool:
            if self.detector is not None:
                from rlmt.data.language import DETECT_CHARS, other_language

                prompts = frame["prompt"].gather(rows).str.slice(0, DETECT_CHARS).to_list()
                foreign = pool.submit(other_language, prompts, fs.language, fs.language_min_confidence, self.detector)
            n_tokens = np.full(n, -1, dtype=np.int64)
            if self.counter is not None and fs.max_prompt_tokens is not None:
                from rlmt.data.token_length import token_lengths

                n_tok, too_long, decided = token_lengths(frame.select(pl.col("messages").gather(rows)), self.counter,
                                                         fs.max_prompt_tokens, seed=[self.seed, self._batches],
                                                         progress=None)
                n_tokens[rows] = n_tok
                frame = _mark(frame, rows[too_long], filters.TOO_LONG)
                self.length_decisions.update(decided)
            if foreign is not None:
                frame = _mark(frame, rows[foreign.result()], filters.LANGUAGE)

        if self.near is not None:
            with self.clock("minhash"):
                rows = _eligible(frame)
                self.near.add(frame["norm"].gather(rows))
                self._near_rows.append(rows + start)
        self._batches += 1
        return frame.with_columns(pl.Series("n_tokens", n_tokens)).select(list(ROW_COLUMNS))


def _eligible(frame: pl.DataFrame) -> np.ndarray:
    """Positions of the rows no check has dropped yet."""
    return np.flatnonzero(frame["reason"].is_null().to_numpy())


def _mark(frame: pl.DataFrame, positions: np.ndarray, reason: str) -> pl.DataFrame:
    """Give `reason` to the rows at these positions that no earlier check has dropped."""
    if len(positions) == 0:
        return frame
    hit = np.zeros(frame.height, dtype=bool)
    hit[positions] = True
    return frame.with_columns(pl.when(pl.Series(hit) & pl.col("reason").is_null()).then(pl.lit(reason))
                              .otherwise(pl.col("reason")).alias("reason"))
