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
"""

from __future__ import annotations

import numpy as np
import polars as pl
from tqdm.auto import tqdm

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
    # Position of each shingle's first word in `flat`.
    row_of = np.repeat(np.arange(len(lengths)), n_sh)
    first = word_off[:-1][row_of] + (np.arange(total) - sh_off[:-1][row_of])
    width = np.minimum(lengths, size)[row_of]
    out = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(size):
            take = k < width
            h = flat[np.minimum(first + k, len(flat) - 1)] if len(flat) else np.zeros(total, np.uint64)
            out ^= np.where(take, (h + np.uint64(k)) * _MIX[k % 3], np.uint64(0))
            out = (out << np.uint64(13)) | (out >> np.uint64(51))
    return out, sh_off


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


def jaccard(a: set[int], b: set[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicates(texts: pl.Series, threshold: float, *, num_perm: int = 32, shingle_size: int = 3,
                    seed: int = 0) -> np.ndarray:
    """Boolean mask: True for rows at least `threshold`-similar to an earlier kept row."""
    n = len(texts)
    dropped = np.zeros(n, dtype=bool)
    if n < 2:
        return dropped
    sig = np.empty((n, num_perm), dtype=np.uint32)
    nonempty = np.zeros(n, dtype=bool)
    chunks = range(0, n, CHUNK_ROWS)
    for start in tqdm(chunks, desc="minhash", disable=len(chunks) < 4, unit="chunk"):
        part = texts.slice(start, CHUNK_ROWS)
        hashes, offsets = shingles(part, shingle_size)
        sig[start:start + len(part)] = signatures(hashes, offsets, num_perm, seed)
        nonempty[start:start + len(part)] = np.diff(offsets) > 0
    bands, rows = lsh_params(threshold, num_perm)
    pairs = candidate_pairs(sig, bands, rows, nonempty)
    if len(pairs) == 0:
        return dropped
    involved = np.unique(pairs)
    hashes, offsets = shingles(texts.gather(involved), shingle_size)
    sets = {int(r): set(hashes[offsets[k]:offsets[k + 1]].tolist()) for k, r in enumerate(involved)}
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by j, then i: i's fate is settled before j's
    for i, j in pairs[order]:
        if dropped[j] or dropped[i]:
            continue
        if jaccard(sets[int(i)], sets[int(j)]) >= threshold:
            dropped[j] = True
    return dropped
