"""Curation throughput: our polars/numpy pipeline vs two baselines that apply the same filters.

    python bench/curate_throughput.py [--rows 1000000] [--baseline-rows 100000] [--workdir DIR]

1. Writes ``--rows`` synthetic raw rows in the Tülu-3 preference format (``prompt``, ``chosen``,
   ``rejected``): lognormal prompt lengths, 1 % over-long, 5 % exact duplicates (case/spacing
   changed), 5 % near-duplicates (one word changed in a long prompt), 2 % malformed (8 kinds),
   3 % French/Spanish/German.
2. Runs ``rlmt.data.curate.curate_mixture`` on all of them in a child process (all filters on: token
   length in the tiny Llama tokenizer with its chat template, language, exact and near duplicates)
   and records its wall time and peak RSS.
3. Runs two baselines on the first ``--baseline-rows`` rows, with the same checks in the same order:
   - naive (old): the reference scripts' style, a pandas frame walked row by row, one tokenizer
     call, one language call and one ``datasketch.MinHash`` per row, ``MinHashLSH``;
   - competent (new): polars reads the columns into lists once and each stage is one list call
     over the surviving rows (one batched ``apply_chat_template(..., tokenize=True)``, one
     ``detect_many``, ``MinHash.bulk``); only the first-kept-wins duplicate decisions stay a loop.
   Near duplicates follow the curation's rule (word n-grams; character n-grams when both prompts
   are short, where rlmt.config.FilterSpec has that rule).
4. Checks that both keep the same ids as ours on those rows (near-duplicate decisions may differ on
   at most 1 % of rows, MinHash being approximate) and that the two baselines agree row for row,
   and prints rows/s for each, the old ratio (ours / naive) and the new one (ours / competent), our
   wall time and our peak memory. Exit status 1 if a target (old ratio >= 20, wall <= 300 s, RSS
   <= 2 GB) or an agreement check fails; the new ratio has no target.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

THRESHOLD, MAX_TOKENS, LANGUAGE, MIN_CONFIDENCE, SHINGLE = 0.9, 1024, "en", 0.5, 3


def _short_prompt_rule() -> tuple[int | None, int]:
    """(characters below which two prompts are compared on character n-grams, n-gram size): the
    curation's defaults when its FilterSpec has that rule, else (None, 5): word shingles for all."""
    from rlmt.config import FilterSpec

    fields = FilterSpec.model_fields
    if "near_dup_char_below" not in fields:
        return None, 5
    return fields["near_dup_char_below"].default, fields["near_dup_shingle_chars"].default


CHAR_BELOW, SHINGLE_CHARS = _short_prompt_rule()

ENGLISH = """time person year way day thing man world life hand part child eye woman place work week case point
government company number group problem fact be have do say get make go know take see come think look want give
use find tell ask work seem feel try leave call good new first last long great little own other old right big high
different small large next early young important few public bad same able to of in for on with at by from up about
into over after the and a that I it not he as you this but his they her she or an will my one all would there their
what so if who which when can like just him how your some could them than then now only its also back after use two
our because any these us please explain write story about describe why garden river music city history science
recipe travel computer program language teacher student market budget report letter email poem song friend family
health exercise weather ocean mountain forest animal book movie game team project plan idea question answer reason
example summary detail simple short clear careful honest quick slow happy difficult easy modern ancient local global""".split()
FOREIGN = {
    "fr": "le la les un une des et est avec pour dans sur que qui pas plus tout faire comme nous vous ils elle cette "
          "pourquoi comment maison jardin histoire musique ville rivière livre ami famille temps travail école".split(),
    "es": "el la los las un una y es con para en sobre que quien no más todo hacer como nosotros ustedes ellos ella "
          "esta por qué cómo casa jardín historia música ciudad río libro amigo familia tiempo trabajo escuela".split(),
    "de": "der die das ein eine und ist mit für in auf dass wer nicht mehr alles machen wie wir ihr sie diese warum "
          "Haus Garten Geschichte Musik Stadt Fluss Buch Freund Familie Zeit Arbeit Schule bitte erklären".split(),
}


# ---------------------------------------------------------------------- data


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """Write `rows` synthetic Tülu-preference rows (chunked, so generation stays small in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = np.array(ENGLISH)
    msg = pa.struct([("role", pa.string()), ("content", pa.string())])
    schema = pa.schema([("id", pa.string()), ("prompt", pa.string()), ("chosen", pa.list_(msg)),
                        ("rejected", pa.list_(msg))])
    long_pool: list[str] = []
    recent: list[str] = []
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            kind = rng.random(n)
            lengths = np.clip(rng.lognormal(np.log(45), 0.9, n), 3, 1500).astype(int)
            over = kind < 0.01
            lengths[over] = rng.integers(2500, 6000, over.sum())
            prompts, chosen, rejected = [], [], []
            for k in range(n):
                i = start + k
                r = kind[k]
                if 0.02 <= r < 0.07 and recent:  # exact duplicate, case and spacing changed
                    text = recent[rng.integers(len(recent))].upper().replace(" ", "  ", 3)
                elif 0.07 <= r < 0.12 and long_pool:  # near duplicate: one word changed
                    base = long_pool[rng.integers(len(long_pool))].split(" ")
                    base[rng.integers(len(base))] = "zebra"
                    text = " ".join(base)
                elif 0.12 <= r < 0.15:
                    lang = ("fr", "es", "de")[i % 3]
                    text = " ".join(rng.choice(FOREIGN[lang], max(8, lengths[k] // 2))) + " ?"
                else:
                    text = " ".join(words[rng.integers(0, len(words), lengths[k])]).capitalize() + "?"
                    if 120 <= lengths[k] < 400 and len(long_pool) < 5000:
                        long_pool.append(text)
                    if len(recent) < 20000:
                        recent.append(text)
                user = {"role": "user", "content": text}
                answer = {"role": "assistant", "content": f"Here is a careful answer to request {i}."}
                conv, prompt = [user, answer], text
                if 0.15 <= r < 0.17:  # 2 % malformed, eight kinds
                    bad = i % 8
                    if bad == 0:
                        conv, prompt = None, None
                    elif bad == 1:
                        conv = []
                    elif bad == 2:
                        conv = [answer]
                    elif bad == 3:
                        conv = [{"role": "narrator", "content": text}, answer]
                    elif bad == 4:
                        conv = [{"role": "user", "content": None}, answer]
                    elif bad == 5:
                        conv = [{"role": "user", "content": "  \n "}, answer]
                    elif bad == 6:
                        conv = [{"role": "user", "content": text + "\x07\x00"}, answer]
                    else:
                        conv = [{"role": None, "content": text}, answer]
                prompts.append(prompt)
                chosen.append(conv)
                rejected.append(None if conv is None else conv[:-1] + [{"role": "assistant", "content": "No."}])
            ids = [f"syn-{start + k}" for k in range(n)]
            writer.write_table(pa.table({"id": ids, "prompt": prompts, "chosen": chosen, "rejected": rejected},
                                        schema=schema))


# ---------------------------------------------------------------------- ours


def run_ours(data: Path, tokenizer: Path, out: Path) -> dict:
    from rlmt.config import FilterSpec, MixtureSpec, SourceSpec
    from rlmt.data.curate import curate_mixture

    spec = MixtureSpec(sources=[SourceSpec(path=str(data), format="tulu-preference", name="syn")],
                       n_train=7560, n_val=250, seed=0,
                       filters=FilterSpec(keep_multi_turn=False, max_prompt_tokens=MAX_TOKENS, language=LANGUAGE,
                                          language_min_confidence=MIN_CONFIDENCE, dedup_exact=True,
                                          near_dup_threshold=THRESHOLD, near_dup_shingle_words=SHINGLE,
                                          **({"near_dup_char_below": CHAR_BELOW, "near_dup_shingle_chars": SHINGLE_CHARS}
                                             if CHAR_BELOW is not None else {})))
    t0 = time.perf_counter()
    result = curate_mixture(spec, out, name="syn", tokenizer_dir=tokenizer)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "stats": {k: result.stats[k] for k in ("in", "kept", "dropped")},
            "length_decisions": result.stats["token_length"].get("decisions")}


# ---------------------------------------------------------------------- the two baselines

# Both apply the same checks in the same order (structure, exact duplicate, token length, language,
# near duplicate), so they decide every row alike; they differ only in how the work is batched.

CONTROL = re.compile(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\uFFFD]")


def _structure(conv, prompt) -> tuple[str | None, list[dict] | None]:
    """(drop reason or None, the prompt's turns ending with its user turn) of one raw row."""
    if conv is None or (not isinstance(conv, (list, np.ndarray))):
        if not isinstance(prompt, str):
            return "missing_field", None
        conv = [{"role": "user", "content": prompt}]
    conv = [dict(m) for m in conv]
    if len(conv) == 0:
        return "empty_messages", None
    if any(not isinstance(m["role"], str) or m["role"] not in ("system", "user", "assistant") for m in conv):
        return "invalid_role", None
    if any(not isinstance(m["content"], str) for m in conv):  # pandas turns nulls into NaN
        return "null_content", None
    while conv and conv[-1]["role"] != "user":
        conv.pop()
    if not conv:
        return "no_user_turn", None
    if sum(m["role"] == "user" for m in conv) > 1:
        return "multi_turn", None
    if not conv[-1]["content"].strip():
        return "empty_prompt", None
    if CONTROL.search("\n\n".join(m["content"] for m in conv)):
        return "control_characters", None
    return None, conv


def _normalized(conv: list[dict]) -> str:
    norm = "\n".join(f"{m['role']}: {m['content']}" for m in conv)
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", norm).lower()).strip()


def _word_shingles(norm: str) -> set[str]:
    words = re.findall(r"\w+", norm.lower())
    if len(words) < SHINGLE:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def _char_shingles(norm: str) -> set[str] | None:
    """Character n-grams when the text is short enough to be compared on them (None: it is not)."""
    if CHAR_BELOW is None or len(norm) >= CHAR_BELOW:
        return None
    if len(norm) < SHINGLE_CHARS:
        return {norm} if norm else set()
    return {norm[i:i + SHINGLE_CHARS] for i in range(len(norm) - SHINGLE_CHARS + 1)}


class NearDuplicates:
    """datasketch MinHashLSH candidates verified by exact Jaccard, first kept row wins. Two short texts
    (both under CHAR_BELOW characters) are compared on character n-grams, any other pair on words."""

    def __init__(self) -> None:
        from datasketch import MinHashLSH

        self.words, self.chars = MinHashLSH(threshold=THRESHOLD, num_perm=128), MinHashLSH(threshold=THRESHOLD, num_perm=128)
        self.word_sets: dict[str, set] = {}
        self.char_sets: dict[str, set] = {}

    def check_and_add(self, key: str, word_sh: set, word_mh, char_sh: set | None, char_mh) -> bool:
        """True if the row is a near duplicate of a kept row; else it is kept (added)."""
        if word_sh:
            for other in self.words.query(word_mh):
                if char_sh is not None and other in self.char_sets:
                    continue  # both short: compared on characters below
                o = self.word_sets[other]
                if len(word_sh & o) / len(word_sh | o) >= THRESHOLD:
                    return True
        if char_sh:
            for other in self.chars.query(char_mh):
                o = self.char_sets[other]
                if len(char_sh & o) / len(char_sh | o) >= THRESHOLD:
                    return True
        if word_sh:
            self.words.insert(key, word_mh)
            self.word_sets[key] = word_sh
        if char_sh:
            self.chars.insert(key, char_mh)
            self.char_sets[key] = char_sh
        return False


def _minhash(shingles: set | None):
    from datasketch import MinHash

    if not shingles:
        return None
    mh = MinHash(num_perm=128)
    for s in shingles:
        mh.update(s.encode())
    return mh


def run_naive(data: Path, tokenizer_dir: Path, rows: int) -> tuple[dict[int, str | None], float]:
    """One row at a time, the way the reference data scripts do it: a pandas frame walked with
    iterrows, one tokenizer call, one language call and one MinHash per row. Row -> reason (None: kept)."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from rlmt.data.language import LanguageDetector

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    detector = LanguageDetector()
    t0 = time.perf_counter()
    df = pq.read_table(data, columns=["chosen", "prompt"]).slice(0, rows).to_pandas()
    seen: set[str] = set()
    near = NearDuplicates()
    decisions: dict[int, str | None] = {}
    for i, row in df.iterrows():
        reason, conv = _structure(row["chosen"], row["prompt"])
        if reason:
            decisions[i] = reason
            continue
        norm = _normalized(conv)
        if norm in seen:
            decisions[i] = "duplicate"
            continue
        seen.add(norm)
        ids = tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=True, return_dict=False)
        if len(ids) > MAX_TOKENS:
            decisions[i] = "too_long"
            continue
        lang, score = detector.detect(conv[-1]["content"])
        if lang != LANGUAGE and score >= MIN_CONFIDENCE:
            decisions[i] = "language"
            continue
        word_sh, char_sh = _word_shingles(norm), _char_shingles(norm)
        dup = near.check_and_add(str(i), word_sh, _minhash(word_sh), char_sh, _minhash(char_sh))
        decisions[i] = "near_duplicate" if dup else None
    return decisions, time.perf_counter() - t0


def run_competent(data: Path, tokenizer_dir: Path, rows: int) -> tuple[dict[int, str | None], float]:
    """What a competent user writes with the same libraries: polars reads the columns into lists
    once, each stage runs over the surviving rows as one list call (one batched tokenizer call with
    the chat template, one ``detect_many``, ``MinHash.bulk``), and only the order-dependent
    decisions (exact and near duplicates, first kept wins) stay a loop."""
    import polars as pl
    from datasketch import MinHash
    from transformers import AutoTokenizer

    from rlmt.data.language import LanguageDetector

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    detector = LanguageDetector()
    t0 = time.perf_counter()
    frame = pl.read_parquet(data, columns=["chosen", "prompt"], n_rows=rows)
    decisions: dict[int, str | None] = {}
    convs: dict[int, list[dict]] = {}
    norms: dict[int, str] = {}
    seen: set[str] = set()
    for i, (conv, prompt) in enumerate(zip(frame["chosen"].to_list(), frame["prompt"].to_list())):
        reason, conv = _structure(conv, prompt)
        if reason is None:
            norm = _normalized(conv)
            reason = "duplicate" if norm in seen else None
            seen.add(norm)
        if reason:
            decisions[i] = reason
        else:
            convs[i], norms[i] = conv, norm
    alive = list(convs)
    ids = tok.apply_chat_template([convs[i] for i in alive], tokenize=True, add_generation_prompt=True,
                                  return_dict=False)
    for i, row_ids in zip(alive, ids):
        if len(row_ids) > MAX_TOKENS:
            decisions[i] = "too_long"
    alive = [i for i in alive if i not in decisions]
    langs, scores = detector.detect_many([convs[i][-1]["content"] for i in alive])
    for i, lang, score in zip(alive, langs, scores):
        if lang != LANGUAGE and score >= MIN_CONFIDENCE:
            decisions[i] = "language"
    alive = [i for i in alive if i not in decisions]
    word_sh = [_word_shingles(norms[i]) for i in alive]
    char_sh = [_char_shingles(norms[i]) for i in alive]

    def bulk(sets):
        todo = [k for k, sh in enumerate(sets) if sh]
        out = [None] * len(sets)
        for k, mh in zip(todo, MinHash.bulk([[s.encode() for s in sets[k]] for k in todo], num_perm=128)):
            out[k] = mh
        return out

    word_mh, char_mh = bulk(word_sh), bulk(char_sh)
    near = NearDuplicates()
    for k, i in enumerate(alive):
        decisions[i] = "near_duplicate" if near.check_and_add(str(i), word_sh[k], word_mh[k], char_sh[k], char_mh[k]) else None
    return decisions, time.perf_counter() - t0


# ---------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--baseline-rows", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--ours-only", nargs=3, metavar=("DATA", "TOKENIZER", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours_only:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        data, tokenizer, out = map(Path, args.ours_only)
        print(json.dumps(run_ours(data, tokenizer, out)))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="curate-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"synthetic-{args.rows}.parquet"
    if not data.exists():
        t0 = time.perf_counter()
        generate(data, args.rows)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.0f}s -> {data}")
    tokenizer = work / "zoo" / "llama-instruct"
    if not tokenizer.exists():
        from rlmt.models.tiny import build_zoo

        build_zoo(work / "zoo", ["llama-instruct"])

    out = work / "mixture"
    proc = subprocess.run([sys.executable, __file__, "--ours-only", str(data), str(tokenizer), str(out)],
                          capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("curate:")))
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB on Linux

    n = args.baseline_rows
    baselines = {"naive": run_naive(data, tokenizer, n), "competent": run_competent(data, tokenizer, n)}

    import polars as pl

    quarantine = pl.read_parquet(out / "quarantine.parquet").filter(pl.col("source_row") < n)
    ours_reason: dict[int, str | None] = {i: None for i in range(n)}
    ours_reason.update(zip(quarantine["source_row"].to_list(), quarantine["reason"].to_list(), strict=True))

    ours_rps = args.rows / ours["wall_s"]
    print(f"ours:      {args.rows:,} rows in {ours['wall_s']:.1f}s = {ours_rps:,.0f} rows/s, peak RSS {peak_gb:.2f} GB")
    print(f"           kept {ours['stats']['kept']:,}; dropped "
          + ", ".join(f"{k}={v:,}" for k, v in ours["stats"]["dropped"].items() if v))
    print(f"           token length decided: {ours['length_decisions']}")
    print(f"near duplicates: Jaccard >= {THRESHOLD} on word {SHINGLE}-grams"
          + (f", on character {SHINGLE_CHARS}-grams when both texts are under {CHAR_BELOW} characters"
             if CHAR_BELOW is not None else ""))
    ok = ours["wall_s"] <= 300 and peak_gb <= 2.0
    ratios = {}
    for name, (decided, wall) in baselines.items():
        rps = n / wall
        ratios[name] = ours_rps / rps
        differ = [i for i in range(n) if (ours_reason[i] is None) != (decided[i] is None)]
        near = [i for i in differ if "near_duplicate" in (ours_reason[i], decided[i])]
        other = [i for i in differ if i not in set(near)]
        print(f"{name + ':':<10} {n:,} rows in {wall:.1f}s = {rps:,.0f} rows/s; vs ours on those rows: {len(differ)} differ "
              f"({len(near)} near-duplicate decisions = {100 * len(near) / n:.3f}%, {len(other)} other)")
        for i in other[:10]:
            print(f"  row {i}: ours={ours_reason[i]} {name}={decided[i]}")
        ok = ok and not other and len(near) <= 0.01 * n
    same = sum(baselines["naive"][0][i] != baselines["competent"][0][i] for i in range(n))
    print(f"naive vs competent baseline: {same} rows decided differently (they must agree)")
    print(f"old ratio (rows/s ours / naive per-row baseline):     {ratios['naive']:.1f}x  (target >= 20x)")
    print(f"new ratio (rows/s ours / competent batched baseline): {ratios['competent']:.1f}x")
    ok = ok and ratios["naive"] >= 20 and same == 0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
