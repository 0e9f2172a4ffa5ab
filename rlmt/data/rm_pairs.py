"""Preference pairs for training a reward model offline (``rlmt data rm-pairs``).

Chosen = a strong reference answer (AlpacaEval's GPT-4 baseline outputs: ``instruction``/``output``
rows), rejected = the small policy's own answer to the same instruction. The reward model trained
on them (:mod:`rlmt.train.reward_model`) learns "closer to the strong model than to the small one",
a real learned preference that a small policy can climb.

The pairs' prompts are kept disjoint from every prompt the experiment trains or evaluates on: any
instruction whose normalised text (case-folded, whitespace collapsed) appears in an ``exclude``
file (mixture parquets, benchmark item files: anything :func:`rlmt.generation.read_prompts` reads)
is dropped and counted. The policy's answers are generated resumably with
:func:`rlmt.generation.generate_file`, so a killed job redoes only what is missing.

Length balance (optional, :func:`balance_by_length`): a strong model's answers are longer than a
small model's, so a reward model trained on these pairs learns length along with quality. Two
options cut that confound, each counted in ``pairs.stats.json``: ``max_length_ratio`` keeps a pair
only when its two answers are within that token ratio; ``min_shorter_chosen_share`` drops pairs
whose chosen answer is not the shorter one (the most lopsided first) until at least that share of
the pairs has the shorter answer chosen. Lengths are the answers' own tokens (no special tokens) in
the policy's tokenizer; every pair row carries them (``chosen_tokens``, ``rejected_tokens``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rlmt.generation.base import SamplingParams
from rlmt.generation.files import generate_file, read_generations, read_prompts


@dataclass
class RMPairsConfig:
    """Settings of ``rlmt data rm-pairs``.

    Attributes:
        limit: use at most this many reference rows (after exclusion), in file order.
        max_new_tokens: the policy's answer budget (the reference answers are not cut).
        temperature: the policy's sampling temperature (0: greedy, its most typical answer).
        seed: sampling seed.
        max_length_ratio: keep a pair only when longer/shorter answer tokens <= this (None: off).
        min_shorter_chosen_share: at least this share of pairs has the chosen answer shorter (None: off).
    """

    limit: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    max_length_ratio: float | None = None
    min_shorter_chosen_share: float | None = None

    def __post_init__(self) -> None:
        if self.max_length_ratio is not None and not self.max_length_ratio >= 1:
            raise ValueError(f"max_length_ratio must be >= 1, got {self.max_length_ratio}")
        if self.min_shorter_chosen_share is not None and not 0 < self.min_shorter_chosen_share < 1:
            raise ValueError(f"min_shorter_chosen_share must be in (0, 1), got {self.min_shorter_chosen_share}")


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def pair_id(instruction: str) -> str:
    return "ref-" + hashlib.sha256(normalise(instruction).encode("utf-8")).hexdigest()[:16]


def read_reference(path: str | Path) -> list[dict]:
    """Rows with a non-empty ``instruction`` and ``output``, from a JSON list or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    bad = [i for i, r in enumerate(rows) if not (isinstance(r, dict) and isinstance(r.get("instruction"), str)
                                                and r["instruction"].strip() and isinstance(r.get("output"), str)
                                                and r["output"].strip())]
    if bad:
        raise ValueError(f"{path}: rows {bad[:10]} lack a non-empty 'instruction' and 'output' ({len(bad)} rows)")
    return rows


def excluded_texts(paths: Sequence[str | Path]) -> set[str]:
    """Normalised text of every user turn of every prompt in `paths`."""
    texts: set[str] = set()
    for path in paths:
        for _, messages in read_prompts(path):
            texts.update(normalise(m["content"]) for m in messages if m["role"] == "user")
    return texts


def build_rm_pairs(reference: str | Path, policy_dir: str | Path, out: str | Path, cfg: RMPairsConfig,
                   exclude: Sequence[str | Path] = (), generator_options: dict | None = None) -> dict:
    """Write ``out`` (pairs JSON lines) and return counts; the policy's raw answers go beside it.
    `generator_options` build the local generator (device, batch size, dtype: the config's ``generation``)."""
    out = Path(out)
    rows = read_reference(reference)
    banned = excluded_texts(exclude)
    kept, seen, n_excluded, n_duplicate = [], set(), 0, 0
    for row in rows:
        rid = pair_id(row["instruction"])
        if normalise(row["instruction"]) in banned:
            n_excluded += 1
        elif rid in seen:
            n_duplicate += 1
        else:
            seen.add(rid)
            kept.append((rid, row))
    if cfg.limit is not None:
        kept = kept[: cfg.limit]
    if not kept:
        raise ValueError(f"{reference}: no reference rows left after excluding {n_excluded} shared prompts")
    items = [(rid, [{"role": "user", "content": row["instruction"]}]) for rid, row in kept]
    answers_file = out.with_name(out.stem + ".policy.jsonl")
    params = SamplingParams(temperature=cfg.temperature, top_p=1.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    generate_file(policy_dir, items, answers_file, params, **(generator_options or {}))
    answers = {g["id"]: g for g in read_generations(answers_file)}
    pairs, n_empty = [], 0
    for rid, row in kept:
        answer = answers[rid]["answer"].strip()
        if not answer:
            n_empty += 1  # nothing to prefer against; counted, not written
            continue
        pairs.append({"id": rid, "prompt": [{"role": "user", "content": row["instruction"]}],
                      "chosen": row["output"], "rejected": answer,
                      "rejected_finish_reason": answers[rid]["finish_reason"]})
    if pairs:
        from rlmt.models.loading import load_tokenizer

        tokenizer = load_tokenizer(policy_dir)
        for side in ("chosen", "rejected"):
            ids = tokenizer([p[side] for p in pairs], add_special_tokens=False)["input_ids"]
            for p, x in zip(pairs, ids):
                p[f"{side}_tokens"] = len(x)
    pairs, balance = balance_by_length(pairs, cfg.max_length_ratio, cfg.min_shorter_chosen_share)
    if not pairs and (cfg.max_length_ratio is not None or cfg.min_shorter_chosen_share is not None):
        raise ValueError(f"length balance left no pairs: {balance}")
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    tmp.replace(out)
    stats = {"reference_rows": len(rows), "excluded_shared_prompts": n_excluded, "duplicates": n_duplicate,
             "used": len(kept), "empty_policy_answers": n_empty, **balance, "pairs": len(pairs)}
    out.with_name(out.stem + ".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def balance_by_length(pairs: Sequence[dict], max_length_ratio: float | None = None,
                      min_shorter_chosen_share: float | None = None) -> tuple[list[dict], dict]:
    """The pairs that satisfy the length-balance options (in their order), and the counts.

    Each pair carries ``chosen_tokens`` and ``rejected_tokens`` (an answer of no tokens counts as 1).
    First ``max_length_ratio``: a pair whose longer answer has more than that many times the shorter
    one's tokens is dropped. Then
    ``min_shorter_chosen_share`` = s: with S pairs whose chosen answer is strictly shorter, at most
    floor(S (1 - s) / s) of the others are kept (those with the smallest chosen/rejected token ratio,
    ties in file order), so that S / kept >= s.
    """
    pairs = list(pairs)

    def shorter_chosen(p: dict) -> bool:
        return p["chosen_tokens"] < p["rejected_tokens"]

    def share(ps: Sequence[dict]) -> float | None:
        return sum(map(shorter_chosen, ps)) / len(ps) if ps else None

    counts = {"chosen_shorter_share_before_balance": share(pairs)}
    n_ratio = 0
    if max_length_ratio is not None:
        kept = [p for p in pairs
                if max(p["chosen_tokens"], p["rejected_tokens"]) / max(min(p["chosen_tokens"], p["rejected_tokens"]), 1)
                <= max_length_ratio]
        n_ratio, pairs = len(pairs) - len(kept), kept
    n_share = 0
    if min_shorter_chosen_share is not None:
        s = min_shorter_chosen_share
        n_shorter = sum(map(shorter_chosen, pairs))
        allowed = math.floor(n_shorter * (1 - s) / s + 1e-9)
        others = sorted((i for i, p in enumerate(pairs) if not shorter_chosen(p)),
                        key=lambda i: (pairs[i]["chosen_tokens"] / max(pairs[i]["rejected_tokens"], 1), i))
        dropped = set(others[allowed:])
        n_share = len(dropped)
        pairs = [p for i, p in enumerate(pairs) if i not in dropped]
    counts.update({"dropped_length_ratio": n_ratio, "dropped_shorter_chosen_share": n_share,
                   "chosen_shorter_share": share(pairs)})
    return pairs, counts
