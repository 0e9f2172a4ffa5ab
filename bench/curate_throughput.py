"""Curation throughput: our polars/numpy pipeline vs a plain pandas + per-row loop, same filters.

    python bench/curate_throughput.py [--rows 1000000] [--baseline-rows 100000] [--workdir DIR]

1. Writes ``--rows`` synthetic raw rows in the Tülu-3 preference format (``prompt``, ``chosen``,
   ``rejected``): lognormal prompt lengths, 1 % over-long, 5 % exact duplicates (case/spacing
   changed), 5 % near-duplicates (one word changed in a long prompt), 2 % malformed (8 kinds),
   3 % French/Spanish/German.
2. Runs ``rlmt.data.curate.curate_mixture`` on all of them in a child process (all filters on: token
   length in the tiny Llama tokenizer with its chat template, language, exact and near duplicates)
   and records its wall time and peak RSS.
3. Runs the naive implementation (the reference scripts' style: one row at a time, one tokenizer
   call per row, one ``datasketch.MinHash`` per row with ``MinHashLSH``) on the first
   ``--baseline-rows`` rows.
4. Checks that both keep the same ids on those rows (near-duplicate decisions may differ on at most
   1 % of rows, MinHash being approximate) and prints rows/s for each, the ratio, our wall time and
   our peak memory. Exit status 1 if a target (ratio >= 20, wall <= 300 s, RSS <= 2 GB) or the
   agreement check fails.
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
                                          near_dup_threshold=THRESHOLD, near_dup_shingle_words=SHINGLE))
    t0 = time.perf_counter()
    result = curate_mixture(spec, out, name="syn", tokenizer_dir=tokenizer)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "stats": {k: result.stats[k] for k in ("in", "kept", "dropped")},
            "length_decisions": result.stats["token_length"].get("decisions")}


# ---------------------------------------------------------------------- naive baseline


CONTROL = re.compile(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\uFFFD]")


def _shingles(norm: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", norm.lower())
    if not words:
        return set()
    if len(words) < SHINGLE:
        return {tuple(words)}
    return {tuple(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def run_baseline(data: Path, tokenizer_dir: Path, rows: int) -> tuple[dict[int, str | None], float]:
    """One row at a time, the way the reference data scripts do it. Returns row -> reason (None: kept)."""
    import pyarrow.parquet as pq  # .to_pandas(): a pandas DataFrame walked with iterrows
    from datasketch import MinHash, MinHashLSH
    from transformers import AutoTokenizer

    from rlmt.data.language import LanguageDetector

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    detector = LanguageDetector()
    t0 = time.perf_counter()
    df = pq.read_table(data, columns=["chosen", "prompt"]).slice(0, rows).to_pandas()
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
    kept_shingles: dict[str, set] = {}
    decisions: dict[int, str | None] = {}
    for i, row in df.iterrows():
        conv = row["chosen"]
        if conv is None or (not isinstance(conv, (list, np.ndarray))):
            if not isinstance(row["prompt"], str):
                decisions[i] = "missing_field"
                continue
            conv = [{"role": "user", "content": row["prompt"]}]
        conv = [dict(m) for m in conv]
        if len(conv) == 0:
            decisions[i] = "empty_messages"
            continue
        if any(not isinstance(m["role"], str) or m["role"] not in ("system", "user", "assistant") for m in conv):
            decisions[i] = "invalid_role"
            continue
        if any(not isinstance(m["content"], str) for m in conv):  # pandas turns nulls into NaN
            decisions[i] = "null_content"
            continue
        while conv and conv[-1]["role"] != "user":
            conv.pop()
        if not conv:
            decisions[i] = "no_user_turn"
            continue
        if sum(m["role"] == "user" for m in conv) > 1:
            decisions[i] = "multi_turn"
            continue
        if not conv[-1]["content"].strip():
            decisions[i] = "empty_prompt"
            continue
        if CONTROL.search("\n\n".join(m["content"] for m in conv)):
            decisions[i] = "control_characters"
            continue
        norm = "\n".join(f"{m['role']}: {m['content']}" for m in conv)
        norm = re.sub(r"\s+", " ", unicodedata.normalize("NFKC", norm).lower()).strip()
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
        sh = _shingles(norm)
        if sh:
            mh = MinHash(num_perm=128)
            for s in sh:
                mh.update(" ".join(s).encode())
            dup = False
            for key in lsh.query(mh):
                other = kept_shingles[key]
                if len(sh & other) / len(sh | other) >= THRESHOLD:
                    dup = True
                    break
            if dup:
                decisions[i] = "near_duplicate"
                continue
            lsh.insert(str(i), mh)
            kept_shingles[str(i)] = sh
        decisions[i] = None
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
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-4000:])
        return 1
    ours = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\n".join(line for line in proc.stderr.splitlines() if line.startswith("curate:")))
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB on Linux

    base, base_wall = run_baseline(data, tokenizer, args.baseline_rows)

    import polars as pl

    quarantine = pl.read_parquet(out / "quarantine.parquet").filter(pl.col("source_row") < args.baseline_rows)
    ours_reason: dict[int, str | None] = {i: None for i in range(args.baseline_rows)}
    ours_reason.update(zip(quarantine["source_row"].to_list(), quarantine["reason"].to_list(), strict=True))
    differ = [i for i in range(args.baseline_rows) if (ours_reason[i] is None) != (base[i] is None)]
    near = [i for i in differ if "near_duplicate" in (ours_reason[i], base[i])]
    other = [i for i in differ if i not in set(near)]

    ours_rps = args.rows / ours["wall_s"]
    base_rps = args.baseline_rows / base_wall
    ratio = ours_rps / base_rps
    print(f"ours:     {args.rows:,} rows in {ours['wall_s']:.1f}s = {ours_rps:,.0f} rows/s, peak RSS {peak_gb:.2f} GB")
    print(f"          kept {ours['stats']['kept']:,}; dropped "
          + ", ".join(f"{k}={v:,}" for k, v in ours["stats"]["dropped"].items() if v))
    print(f"          token length decided: {ours['length_decisions']}")
    print(f"baseline: {args.baseline_rows:,} rows in {base_wall:.1f}s = {base_rps:,.0f} rows/s")
    print(f"ratio (rows/s ours / baseline): {ratio:.1f}x")
    print(f"agreement on the first {args.baseline_rows:,} rows: {len(differ)} differ "
          f"({len(near)} near-duplicate decisions = {100 * len(near) / args.baseline_rows:.3f}%, {len(other)} other)")
    for i in other[:10]:
        print(f"  row {i}: ours={ours_reason[i]} baseline={base[i]}")
    ok = (ratio >= 20 and ours["wall_s"] <= 300 and peak_gb <= 2.0 and not other
          and len(near) <= 0.01 * args.baseline_rows)
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
