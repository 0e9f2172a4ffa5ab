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
            enc = self.tokenizer(texts, add_special_tokens=not self.templated, return_attention_mask=False,
                                 verbose=False)["input_ids"]
            out[start:start + len(texts)] = [len(ids) for ids in enc]
        return out

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

    def calibrate(self, conversations: list[list[dict[str, str]]]) -> LengthBounds:
        """Measure characters per token and check the byte bound on a sample of real rows."""
        counts = self.count(conversations)
        chars = np.array([sum(len(m["content"]) for m in c) for c in conversations], dtype=np.float64)
        rendered_bytes = np.array([len(self.render(c).encode("utf-8")) for c in conversations])
        holds = bool(np.all(counts <= rendered_bytes)) if len(counts) else False
        cpt = float(np.max(chars / np.maximum(counts, 1))) if len(counts) else float(self.vocab_max_chars)
        over = min(self.over_margin * max(cpt, 1.0), float(self.vocab_max_chars))
        bpt = float(np.min(rendered_bytes / np.maximum(counts, 1))) if len(counts) else 1.0
        short = max(1.0, bpt / self.under_margin) if holds else 0.0
        self.bounds = LengthBounds(holds, bpt, short, cpt, over, self.vocab_max_chars, len(conversations))
        return self.bounds


def token_lengths(frame: pl.DataFrame, counter: TokenCounter, limit: int | None, seed: int = 0,
                  calibration_rows: int = 512) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """For the rows of `frame` (``messages``): (exact n_tokens or -1 when decided by bound, too_long, counts).

    counts says how many rows each path decided; the test suite checks the shortcut against exact
    counts.
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
        bounds = counter.calibrate(frame["messages"].gather(sample).to_list())
        short = content_bytes + over_head <= limit * bounds.short_bytes_per_token
        long = content_chars > limit * bounds.over_chars_per_token
        uncertain = ~(short | long)
    idx = np.flatnonzero(uncertain)
    if len(idx):
        n_tokens[idx] = counter.count(frame["messages"].gather(idx).to_list(), progress="tokenize")
    too_long = long.copy() if limit is not None else np.zeros(n, dtype=bool)
    if limit is not None:
        too_long[idx] = n_tokens[idx] > limit
    counts = {"by_bound_short": int(short.sum()), "by_bound_long": int(long.sum()), "tokenized": int(len(idx))}
    return n_tokens, too_long, counts
