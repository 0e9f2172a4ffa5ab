"""Prompt length in the policy's tokens, tokenizing only the rows whose length is in doubt.

The length that matters is the prompt the trainer feeds the policy: the conversation rendered with
the tokenizer's chat template (with the generation prompt), or the turns joined when the tokenizer
has none. One tokenizer call per row costs ~0.7 ms, so on a million rows most rows are decided
from their length alone, with bounds measured on the tokenizer:

* certainly short: a byte-level tokenizer never makes more tokens than the rendered text has
  bytes, so ``bytes(content) + bytes(empty template) <= limit`` proves the row fits. The bound is
  checked on a calibration sample; a tokenizer that breaks it (tokens > bytes) loses the shortcut.
  Past that, a row is also taken as short when its rendered bytes are at most
  ``limit * bpt / under_margin``, ``bpt`` being the smallest bytes-per-token ratio on the
  calibration sample (drawn from the rows the exact bound could not decide, so odd scripts and
  digit runs in the data pull it down).
* certainly long: ``chars(content) > limit * cpt`` where ``cpt`` is ``over_margin`` times the
  largest characters-per-token ratio seen on the calibration sample, capped by the longest
  vocabulary entry (no token covers more characters than that).

The two measured bounds are estimates with a safety margin, not proofs; the test suite and
``bench/curate_throughput.py`` compare their decisions with tokenizing every row.

Everything in between is rendered and tokenized exactly, in batches through the fast tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

TOKENIZE_BATCH = 1024


@dataclass
class LengthBounds:
    """What the calibration measured; reported in stats.json so a reader can check the shortcut."""

    byte_bound_holds: bool
    min_bytes_per_token: float
    short_bytes_per_token: float
    max_chars_per_token: float
    over_chars_per_token: float
    vocab_max_chars: int
    calibration_rows: int


class TokenCounter:
    """Counts prompt tokens the way the policy sees them."""

    def __init__(self, tokenizer_dir: str | Path, over_margin: float = 2.0, under_margin: float = 1.25):
        from rlmt.models.loading import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer_dir)
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        self.over_margin = over_margin
        self.under_margin = under_margin
        self._overhead_bytes: dict[tuple[str, ...], int] = {}
        self.vocab_max_chars = self._vocab_max_chars()
        self.bounds: LengthBounds | None = None

    # ---------------------------------------------------------------- exact counts

    def render(self, messages: list[dict[str, str]]) -> str:
        if self.templated:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages)

    def count(self, conversations: list[list[dict[str, str]]], progress: str | None = None) -> np.ndarray:
        """Exact token counts of rendered prompts, batch-tokenized."""
        out = np.zeros(len(conversations), dtype=np.int64)
        starts = range(0, len(conversations), TOKENIZE_BATCH)
        for start in tqdm(starts, desc=progress, disable=progress is None or len(starts) < 4, unit="batch"):
            texts = [self.render(m) for m in conversations[start:start + TOKENIZE_BATCH]]
            out[start:start + len(texts)] = self._lengths(texts)
        return out

    def _lengths(self, texts: list[str]) -> list[int]:
        add_special = not self.templated  # a chat template writes its own BOS
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            # Straight to the Rust tokenizer: the same ids as the Python wrapper, without turning
            # every id into a Python int (a third of the time on long prompts); only lengths are kept.
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            return [len(e) for e in encode(texts, add_special_tokens=add_special)]
        enc = self.tokenizer(texts, add_special_tokens=add_special, return_attention_mask=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    # ---------------------------------------------------------------- bounds

    def _vocab_max_chars(self) -> int:
        tok = self.tokenizer
        pieces = tok.convert_ids_to_tokens(list(range(len(tok))))
        longest = 0
        for piece in pieces:
            if piece is None:
                continue
            longest = max(longest, len(tok.convert_tokens_to_string([piece])))
        return max(longest, 1)

    def overhead_bytes(self, roles: tuple[str, ...]) -> int:
        """Bytes the template adds around contents for this sequence of roles."""
        if roles not in self._overhead_bytes:
            empty = [{"role": r, "content": ""} for r in roles]
            self._overhead_bytes[roles] = len(self.render(empty).encode("utf-8"))
        return self._overhead_bytes[roles]

    def calibrate(self, conversations: list[list[dict[str, str]]]) -> tuple[LengthBounds, np.ndarray]:
        """Measure characters and bytes per token on a sample of real rows; returns the bounds and the
        sample's exact counts.

        Calibration accumulates: curation calls this once per read batch, and each call widens the
        bounds to cover every row measured so far, so they only ever get more conservative.
        """
        counts = self.count(conversations)
        chars = np.array([sum(len(m["content"]) for m in c) for c in conversations], dtype=np.float64)
        rendered_bytes = np.array([len(self.render(c).encode("utf-8")) for c in conversations])
        prev = self.bounds
        holds = bool(np.all(counts <= rendered_bytes)) and (prev is None or prev.byte_bound_holds)
        cpt = float(np.max(chars / np.maximum(counts, 1))) if len(counts) else 0.0
        bpt = float(np.min(rendered_bytes / np.maximum(counts, 1))) if len(counts) else float("inf")
        if prev is not None:
            cpt, bpt = max(cpt, prev.max_chars_per_token), min(bpt, prev.min_bytes_per_token)
        if cpt == 0.0 and bpt == float("inf"):  # nothing measured yet: no shortcut either way
            cpt, bpt, holds = float(self.vocab_max_chars), 1.0, False
        over = min(self.over_margin * max(cpt, 1.0), float(self.vocab_max_chars))
        short = max(1.0, bpt / self.under_margin) if holds else 0.0
        rows = len(conversations) + (prev.calibration_rows if prev is not None else 0)
        self.bounds = LengthBounds(holds, bpt, short, cpt, over, self.vocab_max_chars, rows)
        return self.bounds, counts


def token_lengths(frame: pl.DataFrame, counter: TokenCounter, limit: int | None, seed: int | list[int] = 0,
                  calibration_rows: int = 512, progress: str | None = "tokenize"
                  ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """For the rows of `frame` (``messages``): (exact n_tokens or -1 when decided by bound, too_long, counts).

    Up to `calibration_rows` rows (drawn with `seed` from those the exact byte bound cannot settle)
    are tokenized first to calibrate ``counter``; see :meth:`TokenCounter.calibrate`. counts says
    how many rows each path decided; the test suite checks the shortcut against exact counts.
    """
    n = frame.height
    n_tokens = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return n_tokens, np.zeros(0, dtype=bool), {"by_bound_short": 0, "by_bound_long": 0, "tokenized": 0}
    contents = pl.col("messages").list.eval(pl.element().struct.field("content"))
    meta = frame.select(
        contents.list.eval(pl.element().str.len_bytes()).list.sum().alias("bytes"),
        contents.list.eval(pl.element().str.len_chars()).list.sum().alias("chars"),
        pl.col("messages").list.eval(pl.element().struct.field("role")).list.join("\x1f").alias("roles"))
    roles_keys = meta["roles"].to_list()
    overhead = {key: counter.overhead_bytes(tuple(key.split("\x1f"))) for key in set(roles_keys)}
    over_head = np.array([overhead[k] for k in roles_keys], dtype=np.int64)
    content_bytes = meta["bytes"].to_numpy().astype(np.int64)
    content_chars = meta["chars"].to_numpy().astype(np.int64)
    if limit is None:
        uncertain = np.ones(n, dtype=bool)
        short = long = np.zeros(n, dtype=bool)
    else:
        rng = np.random.default_rng(seed)
        middle = np.flatnonzero(content_bytes + over_head > limit)
        pool = middle if len(middle) >= calibration_rows else np.arange(n)
        sample = np.sort(rng.choice(pool, size=min(calibration_rows, len(pool)), replace=False))
        bounds, sample_counts = counter.calibrate(frame["messages"].gather(sample).to_list())
        n_tokens[sample] = sample_counts  # measured already: not tokenized twice
        short = content_bytes + over_head <= limit * bounds.short_bytes_per_token
        long = content_chars > limit * bounds.over_chars_per_token
        uncertain = ~(short | long)
        short &= n_tokens < 0
        long &= n_tokens < 0
    idx = np.flatnonzero(uncertain & (n_tokens < 0))
    if len(idx):
        n_tokens[idx] = counter.count(frame["messages"].gather(idx).to_list(), progress=progress)
    measured = n_tokens >= 0
    too_long = long.copy() if limit is not None else np.zeros(n, dtype=bool)
    if limit is not None:
        too_long[measured] = n_tokens[measured] > limit
    counts = {"by_bound_short": int(short.sum()), "by_bound_long": int(long.sum()), "tokenized": int(measured.sum())}
    return n_tokens, too_long, counts
