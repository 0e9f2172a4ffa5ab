"""Near-duplicate detection: vectorized MinHash, LSH banding for candidates, exact verification.

One ``datasketch.MinHash`` per row costs ~1.4 ms in Python; here the shingle hashes of a whole
chunk of rows sit in one numpy array and each permutation is one vectorized multiply-shift plus a
``minimum.reduceat`` over the row boundaries. LSH banding proposes candidate pairs; every candidate
is then verified with the exact Jaccard similarity of the two shingle sets, so the only
approximation left is a pair that banding misses (probability below 0.5 % at the threshold, far
less above it), or whose signatures agree on too few values to be worth verifying (below 0.1 % at
the threshold: :func:`min_agreement`).

What counts as a near duplicate. Two rows are compared on their normalized texts (roles and
contents, NFKC, lowercased, whitespace collapsed: :func:`rlmt.data.filters.with_normalized_text`):

* when **both** texts are shorter than ``char_below`` characters, on their *character*
  ``char_size``-grams (``near_dup_char_below``, default 400 characters, and
  ``near_dup_shingle_chars``, default 5);
* otherwise on their *word* ``shingle_size``-grams (``\\w+`` words; ``near_dup_shingle_words``).

They are near duplicates when the Jaccard similarity of those shingle sets is at least the
threshold. Word n-grams suit long prompts but are blunt on short ones: one changed word removes
up to ``shingle_size`` of a text's word n-grams, so at threshold 0.9 with word 3-grams a
one-character typo is caught only from about 60 words on (and a 30-word prompt's typo variant
scores 0.8). One changed character removes at most ``char_size`` character n-grams and adds as
many, so a one-character variant of a text with *n* distinct character 5-grams (about its length)
scores at least (n - 5) / (n + 5): caught from about 100 characters (~16 words) on, while two
different short prompts ("... a poem about the sea ..." and "... about the city ...") share far
fewer than 90 % of their character 5-grams. Texts shorter than that differ too much per character
to be called near duplicates (``what is 12 times 7?`` and ``... 8?`` are different prompts);
exact duplicates are caught before. 400 characters (about 60 English words) is where word 3-grams
begin to catch a changed word at 0.9, so they take over there. The rule looks at the pair: a short
text and a long one are compared on words, as two long ones are. A text under ``char_size``
characters (or ``shingle_size`` words) is one shingle of all of them; one without any has no
shingles and is never a near duplicate.

The decision rule is order-based like a streaming deduplicator: a row is dropped when it is a near
duplicate of an earlier row that was itself kept.

:class:`NearDuplicateIndex` takes rows a batch at a time, so curation never holds every text: it
keeps each row's signatures (``num_perm`` uint32 for the word n-grams of every row, and as many
for the character n-grams of each short row) in memory and appends the shingle hashes to scratch
files, from which only the rows in candidate pairs are read back for verification.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

CHUNK_ROWS = 32_768
CHAR_CHUNK_ROWS = 4_096  # rows under char_below: at most ~1.6M characters per slice
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


def min_agreement(threshold: float, num_perm: int, miss: float = 1e-3) -> int:
    """Fewest equal signature values a candidate pair needs to be verified: a pair exactly at the
    threshold agrees on Binomial(num_perm, threshold) values, and falls below this count with
    probability at most `miss` (more similar pairs, less)."""
    below, k = 0.0, 0
    while k <= num_perm:
        p_k = math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k)
        if below + p_k > miss:
            return k
        below += p_k
        k += 1
    return num_perm


def word_shingles(texts: pl.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 shingle hashes, row offsets of length n+1) for word `size`-grams of each text.

    Words are ``\\w+`` runs of the lowercased text. A text with fewer than `size` words is one
    shingle of all its words; one with no words has none.
    """
    words = texts.str.to_lowercase().str.extract_all(r"\w+").fill_null([])
    lengths = words.list.len().to_numpy().astype(np.int64)
    flat = words.explode().drop_nulls().hash(seed=17).to_numpy()
    return _ngrams(flat, lengths, size)


def char_shingles(texts: pl.Series, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat uint64 shingle hashes, row offsets of length n+1) for character `size`-grams of each
    text, as they are (the normalized texts are lowercased already). A text shorter than `size`
    characters is one shingle of all of them; an empty one has none."""
    lengths = texts.fill_null("").str.len_chars().to_numpy().astype(np.int64)
    joined = "".join(texts.fill_null("").to_list())
    codepoints = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return _ngrams(_mix64(codepoints), lengths, size)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads small integers (code points) over all 64 bits."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _ngrams(flat: np.ndarray, lengths: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the `size`-grams of each row's tokens (``flat`` holds every row's token hashes in
    a row, ``lengths`` how many each row has), with the row offsets into them."""
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
        # Hash every run of `size` consecutive tokens of the flat array with contiguous slices (no
        # gathers), then keep the runs that end inside the text they start in.
        run = _combine([flat[k:k + n_runs] for k in range(size)], size)
        row_end = np.repeat(word_off[1:], lengths)[:n_runs]
        out[in_full_row] = run[np.arange(size, n_runs + size) <= row_end]
    short = np.flatnonzero(~full & (lengths > 0))
    if len(short):  # fewer tokens than `size`: one shingle of all of them
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


AGREE_CHUNK = 65_536  # candidate pairs compared at a time


def _agreements(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Equal signature values per candidate pair, a chunk of pairs at a time: short texts sharing one
    band through a common shingle make millions of candidates, and gathering both signatures of all
    of them at once (2 x pairs x num_perm uint32) was the curation's peak memory."""
    out = np.zeros(len(pairs), dtype=np.int64)
    for lo in range(0, len(pairs), AGREE_CHUNK):
        part = pairs[lo:lo + AGREE_CHUNK]
        out[lo:lo + len(part)] = (sig[part[:, 0]] == sig[part[:, 1]]).sum(axis=1)
    return out


class _ShingleSpace:
    """One kind of shingles (word or character n-grams) over the rows that use it: their MinHash
    signatures in memory, their shingle hashes in a scratch file."""

    def __init__(self, path: Path, num_perm: int, seed: int) -> None:
        self.num_perm, self.seed, self.path = num_perm, seed, path
        self._spill = open(path, "wb")
        self._signatures: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []  # shingles per member row, in the order they were added
        self._rows: list[np.ndarray] = []  # each member's position among all rows of the index

    def add(self, hashes: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
        self._signatures.append(signatures(hashes, offsets, self.num_perm, self.seed))
        self._counts.append(np.diff(offsets))
        self._rows.append(rows)
        self._spill.write(hashes.tobytes())

    def candidates(self, threshold: float) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """(candidate pairs as row positions of the index, i < j; each such row's distinct shingle hashes)."""
        self._spill.close()
        empty = np.zeros((0, 2), dtype=np.int64)
        if not self._counts:
            return empty, {}
        counts, rows = np.concatenate(self._counts), np.concatenate(self._rows)
        if len(counts) < 2:
            return empty, {}
        sig = np.concatenate(self._signatures)
        self._signatures = [sig]
        local = candidate_pairs(sig, *lsh_params(threshold, self.num_perm), counts > 0)
        # A pair that shares one band but few signature values is far below the threshold: short
        # texts share a band through a common shingle ("user: ..."). Only the rest are verified.
        local = local[_agreements(sig, local) >= min_agreement(threshold, self.num_perm)]
        if len(local) == 0:
            return empty, {}
        starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        sets = self._read_back(np.unique(local), starts)
        return rows[local], {int(rows[k]): v for k, v in sets.items()}

    def _read_back(self, members: np.ndarray, starts: np.ndarray) -> dict[int, np.ndarray]:
        """Each member's distinct shingle hashes (sorted), read from the spill file with plain reads:
        a memory map would count every page it touches as this process's memory."""
        out: dict[int, np.ndarray] = {}
        with open(self.path, "rb") as fh:
            for r in members.tolist():  # ascending: the reads move forward through the file
                fh.seek(int(starts[r]) * 8)
                out[r] = np.unique(np.fromfile(fh, dtype=np.uint64, count=int(starts[r + 1] - starts[r])))
        return out


class NearDuplicateIndex:
    """Near-duplicate decisions over rows added in order, batch by batch (see the module docstring).

    Args:
        scratch_dir: where the shingle hashes are spilled (binary files, removed with the directory).
        threshold: the Jaccard similarity from which a row is a near duplicate.
        num_perm, shingle_size, seed: MinHash settings and words per word shingle; the same seed
            gives the same decisions.
        char_size, char_below: characters per character shingle, and the length (characters of
            the text) under which two texts are compared on character shingles; None: words only.
    """

    def __init__(self, scratch_dir: str | Path, *, threshold: float, num_perm: int = 32, shingle_size: int = 3,
                 char_size: int = 5, char_below: int | None = None, seed: int = 0) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold, self.num_perm, self.shingle_size, self.seed = threshold, num_perm, shingle_size, seed
        self.char_size, self.char_below = char_size, char_below
        self._words = _ShingleSpace(Path(scratch_dir) / "word-shingles.u64", num_perm, seed)
        self._chars = (_ShingleSpace(Path(scratch_dir) / "char-shingles.u64", num_perm, seed)
                       if char_below is not None else None)
        self._short: list[np.ndarray] = []  # per row: shorter than char_below (compared on characters)

    def __len__(self) -> int:
        return sum(len(s) for s in self._short)

    def add(self, texts: pl.Series) -> None:
        """Append rows (normalized texts); their positions continue from the rows added before."""
        for start in range(0, len(texts), CHUNK_ROWS):
            chunk = texts.slice(start, CHUNK_ROWS)
            first = len(self)
            rows = np.arange(first, first + len(chunk), dtype=np.int64)
            self._words.add(*word_shingles(chunk, self.shingle_size), rows)
            short = np.zeros(len(chunk), dtype=bool)
            if self._chars is not None:
                short = chunk.fill_null("").str.len_chars().to_numpy() < self.char_below
                picked = np.flatnonzero(short)
                # A character n-gram array has one uint64 per character, several times the word
                # shingles of the same rows, and building it needs a few temporaries of its size:
                # smaller slices keep that transient memory near the word path's.
                for lo in range(0, len(picked), CHAR_CHUNK_ROWS):
                    part = picked[lo:lo + CHAR_CHUNK_ROWS]
                    self._chars.add(*char_shingles(chunk.gather(part), self.char_size), rows[part])
            self._short.append(short)

    def duplicates(self) -> np.ndarray:
        """Boolean mask over all added rows: True for a near duplicate of an earlier kept row."""
        n = len(self)
        dropped = np.zeros(n, dtype=bool)
        short = np.concatenate(self._short) if self._short else np.zeros(0, dtype=bool)
        word_pairs, word_sets = self._words.candidates(self.threshold)
        # Two short texts are compared on their characters only, whatever their words share.
        word_pairs = word_pairs[~(short[word_pairs[:, 0]] & short[word_pairs[:, 1]])]
        spaces = [(word_pairs, word_sets)]
        if self._chars is not None:
            spaces.append(self._chars.candidates(self.threshold))
        pairs = np.concatenate([p for p, _ in spaces])
        kind = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, (p, _) in enumerate(spaces)])
        order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by j, then i: i's fate is settled before j's
        for (i, j), k in zip(pairs[order].tolist(), kind[order].tolist(), strict=True):
            if dropped[j] or dropped[i]:
                continue
            sets = spaces[k][1]
            if jaccard(sets[i], sets[j]) >= self.threshold:
                dropped[j] = True
        return dropped


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sets given as sorted arrays of distinct hashes (1.0 for two empty sets)."""
    shared = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - shared
    return shared / union if union else 1.0
