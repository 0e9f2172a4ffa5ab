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
"""

from __future__ import annotations

import hashlib
import json
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
    """

    limit: int | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0


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
    tmp = out.with_name(out.name + ".tmp")
    n_pairs = n_empty = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rid, row in kept:
            answer = answers[rid]["answer"].strip()
            if not answer:
                n_empty += 1  # nothing to prefer against; counted, not written
                continue
            f.write(json.dumps({"id": rid, "prompt": [{"role": "user", "content": row["instruction"]}],
                                "chosen": row["output"], "rejected": answer,
                                "rejected_finish_reason": answers[rid]["finish_reason"]}, ensure_ascii=False) + "\n")
            n_pairs += 1
    tmp.replace(out)
    stats = {"reference_rows": len(rows), "excluded_shared_prompts": n_excluded, "duplicates": n_duplicate,
             "used": len(kept), "empty_policy_answers": n_empty, "pairs": n_pairs}
    out.with_name(out.stem + ".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats
