"""Near-duplicate detection: vectorized MinHash, LSH banding for candidates, exact verification.

One ``datasketch.MinHash`` per row costs ~1.4 ms in Python; here the shingle hashes of a whole
chunk of rows sit in one numpy array and each permutation is one vectorized multiply-shift plus a
``minimum.reduceat`` over the row boundaries. LSH banding proposes candidate pairs; every candidate
is then verified with the exact Jaccard similarity of the two shingle sets, so the only
approximation left is a candidate pair that banding misses (probability below 0.5 % at the
threshold, far less above it).

Shingles are word n-grams of the normalized text (``\\w+`` words, lowercased). The decision rule
is order-based like a streaming deduplicator: a row is dropped when it is at least `threshold`
similar to an earlier row that was itself kept.

:class:`NearDuplicateIndex` takes rows a batch at a time, so curation never holds every text: it
keeps each row's signature (``num_perm`` uint32) in memory and appends its shingle hashes to a
scratch file, from which only the rows in candidate pairs are read back for verification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

CHUNK_ROWS = 32_768
_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))
MAX_GROUP = 64  # pairs per LSH bucket are capped: a bucket this large means many candidates already


def lsh_params(threshold: float, num_perm: int, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows per band): the most selective banding that still finds pairs at the threshold."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            best = (bands, rows)
    return best


def shingles(texts: pl.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 shingle hashes, row offsets of length n+1) for word `size`-grams of each text.

    A text with fewer than `size` words is one shingle of all its words; one with no words has none.
    """
    words = texts.str.to_lowercase().str.extract_all(r"\w+").fill_null([])
    lengths = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls().hash(seed=17).to_numpy()
    word_off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=word_off[1:])
    n_sh = np.where(lengths >= size, lengths - size + 1, np.minimum(lengths, 1))
    sh_off = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(n_sh, out=sh_off[1:])
    total = int(sh_off[-1])
    out = np.empty(total, dtype=np.uint64)
    full = lengths >= size
    in_full_row = np.repeat(full, n_sh)
    n_runs = len(flat) - size + 1
    if n_runs > 0 and full.any():
        # Hash every run of `size` consecutive words of the flat array with contiguous slices (no
        # gathers), then keep the runs that end inside the text they start in.
        run = _combine([flat[k:k + n_runs] for k in range(size)], size)
        row_end = np.repeat(word_off[1:], lengths)[:n_runs]
        out[in_full_row] = run[np.arange(size, n_runs + size) <= row_end]
    short = np.flatnonzero(~full & (lengths > 0))
    if len(short):  # fewer words than `size`: one shingle of all of them
        firsts, width = word_off[:-1][short], lengths[short]
        parts = [np.where(k < width, flat[np.minimum(firsts + k, len(flat) - 1)], np.uint64(0)) for k in range(size)]
        out[sh_off[:-1][short]] = _combine(parts, size, width)
    return out, sh_off


def _combine(words: list[np.ndarray], size: int, width: np.ndarray | None = None) -> np.ndarray:
    """Order-sensitive 64-bit hash of word-hash tuples (``words[k]`` is the k-th word of each);
    with `width`, words at k >= width are absent."""
    out = np.zeros(len(words[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            mixed = (words[k] + np.uint64(k)) * _MIX[k % 3]
            out ^= mixed if width is None else np.where(k < width, mixed, np.uint64(0))
            out = (out << np.uint64(13)) | (out >> np.uint64(51))
    return out


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Odd multipliers and offsets of the permutations x -> a*x + b (mod 2**32)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=num_perm, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(hashes: np.ndarray, offsets: np.ndarray, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (rows x num_perm, uint32); rows without shingles get all-max (never candidates)."""
    n = len(offsets) - 1
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    if len(nonempty) == 0:
        return sig
    # Fold the 64-bit shingle hashes to 32 bits once; each permutation is then two uint32 passes
    # (wrapping multiply-add, a bijection for odd a) and one reduceat over the row boundaries.
    x = ((hashes >> np.uint64(32)) ^ (hashes & _MASK32)).astype(np.uint32)
    a, b = _perm_params(num_perm, seed)
    starts = offsets[:-1][nonempty]
    v = np.empty_like(x)
    with np.errstate(over="ignore"):
        for p in range(num_perm):
            np.multiply(x, a[p], out=v)
            np.add(v, b[p], out=v)
            sig[nonempty, p] = np.minimum.reduceat(v, starts)
    return sig


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, valid: np.ndarray) -> np.ndarray:
    """Unique (i, j) index pairs, i < j, that share at least one LSH band."""
    found = []
    idx_valid = np.flatnonzero(valid)
    for band in range(bands):
        part = np.ascontiguousarray(sig[idx_valid, band * rows:(band + 1) * rows])
        key = np.zeros(len(idx_valid), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for c in range(rows):
                key = key * np.uint64(0x100000001B3) ^ part[:, c].astype(np.uint64)
        order = np.argsort(key, kind="stable")
        boundaries = np.flatnonzero(np.diff(key[order])) + 1
        starts = np.concatenate([[0], boundaries])
        sizes = np.diff(np.concatenate([starts, [len(order)]]))
        pair_starts = starts[sizes == 2]  # the common case, done without a Python loop
        if len(pair_starts):
            a, b = idx_valid[order[pair_starts]], idx_valid[order[pair_starts + 1]]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        for s, size in zip(starts[sizes > 2], sizes[sizes > 2], strict=True):
            members = np.sort(idx_valid[order[s:s + size]])[:MAX_GROUP]
            ii, jj = np.triu_indices(len(members), k=1)
            found.append(np.stack([members[ii], members[jj]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0)


class NearDuplicateIndex:
    """Near-duplicate decisions over rows added in order, batch by batch (see the module docstring).

    Args:
        scratch_dir: where the shingle hashes are spilled (one binary file, removed with the directory).
        num_perm, shingle_size, seed: MinHash settings; the same seed gives the same decisions.
    """

    def __init__(self, scratch_dir: str | Path, *, num_perm: int = 32, shingle_size: int = 3, seed: int = 0) -> None:
        self.num_perm, self.shingle_size, self.seed = num_perm, shingle_size, seed
        self._path = Path(scratch_dir) / "shingles.u64"
        self._spill = open(self._path, "wb")
        self._signatures: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []  # shingles per row, in the order rows were added

    def __len__(self) -> int:
        return sum(len(c) for c in self._counts)

    def add(self, texts: pl.Series) -> None:
        """Append rows (normalized texts); their positions continue from the rows added before."""
        for start in range(0, len(texts), CHUNK_ROWS):
            hashes, offsets = shingles(texts.slice(start, CHUNK_ROWS), self.shingle_size)
            self._signatures.append(signatures(hashes, offsets, self.num_perm, self.seed))
            self._counts.append(np.diff(offsets))
            self._spill.write(hashes.tobytes())

    def duplicates(self, threshold: float) -> np.ndarray:
        """Boolean mask over all added rows: True for rows at least `threshold`-similar to an earlier kept row."""
        self._spill.close()
        n = len(self)
        dropped = np.zeros(n, dtype=bool)
        if n < 2:
            return dropped
        counts = np.concatenate(self._counts)
        sig = np.concatenate(self._signatures)
        self._signatures = [sig]
        pairs = candidate_pairs(sig, *lsh_params(threshold, self.num_perm), counts > 0)
        if len(pairs) == 0:
            return dropped
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        shingle_sets = self._read_back(np.unique(pairs), starts)
        order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by j, then i: i's fate is settled before j's
        for i, j in pairs[order]:
            if dropped[j] or dropped[i]:
                continue
            a, b = shingle_sets[int(i)], shingle_sets[int(j)]
            shared = len(np.intersect1d(a, b, assume_unique=True))
            union = len(a) + len(b) - shared
            if (shared / union if union else 1.0) >= threshold:
                dropped[j] = True
        return dropped

    def _read_back(self, rows: np.ndarray, starts: np.ndarray) -> dict[int, np.ndarray]:
        """Each row's distinct shingle hashes (sorted), read from the spill file with plain reads:
        a memory map would count every page it touches as this process's memory."""
        out: dict[int, np.ndarray] = {}
        with open(self._path, "rb") as fh:
            for r in rows.tolist():  # ascending: the reads move forward through the file
                fh.seek(int(starts[r]) * 8)
                out[r] = np.unique(np.fromfile(fh, dtype=np.uint64, count=int(starts[r + 1] - starts[r])))
        return out
