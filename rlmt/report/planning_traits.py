"""Planning-trait analysis (paper §5, Figure 4): how do two models' thoughts plan differently?

For the same prompts, a judge
1. lists 3-8 planning characteristics of each thought (JSON list);
2. compares the trait lists of A and B in random batches of ``batch_size`` prompts, naming 1-3
   consistent differences per batch;
3. merges the differences of ``n_batches`` batches into at most ``max_traits`` surviving traits;
4. decides, for every trait and every prompt, which thought shows the trait more (A / B / tie),
   with the two thoughts' positions drawn at random per prompt so position bias cancels.
Each trait's head-to-head win rate is (A wins + ties / 2) / decided, reported as a table
(``traits.csv``, ``traits.md``) and a figure (``traits.png``); every judge reply is kept in
``traits_judgments.jsonl``. Judge replies that do not parse are counted, never guessed.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from rlmt.judges import prompts
from rlmt.judges.client import JudgePrompt
from rlmt.judges.parsing import parse_string_list, parse_trait_differences, parse_winner


@dataclass
class TraitsConfig:
    """Settings of the analysis; the defaults are the paper's."""

    batch_size: int = 20  # prompts per comparison batch
    n_batches: int = 10  # random batches whose differences are summarised
    max_traits: int = 8  # surviving traits at most
    max_thought_words: int = 1500  # thoughts are cut to this many words in judge prompts
    seed: int = 0


class TraitsError(ValueError):
    """Inputs the analysis cannot use (no shared prompts with thoughts, nothing parsed)."""


def _prompt_text(row: dict) -> str:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        return "\n\n".join(f"{m.get('role', 'user').upper()}: {m.get('content', '')}" for m in prompt)
    return str(prompt or "")


def planning_traits(gens_a: dict[str, dict], gens_b: dict[str, dict], judge, out_dir: str | Path,
                    name_a: str = "A", name_b: str = "B", cfg: TraitsConfig | None = None) -> dict:
    """Run the four steps; write the table, figure and judgments under ``out_dir``; return the summary."""
    cfg = cfg or TraitsConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted(i for i in set(gens_a) & set(gens_b)
                 if (gens_a[i].get("thought") or "").strip() and (gens_b[i].get("thought") or "").strip())
    if not ids:
        raise TraitsError("the two generation files share no prompt on which both models wrote a thought")
    cut = lambda t: prompts.truncate_words(t, cfg.max_thought_words)  # noqa: E731
    log: list[dict] = []

    def ask(step: str, keys: list[dict], texts: list[str], parser, max_tokens: int) -> list:
        replies = judge.complete_many([JudgePrompt(prompts.user(t), max_tokens) for t in texts], desc=f"traits/{step}")
        parsed = []
        for key, reply in zip(keys, replies):
            value = parser(reply.text) if reply.text is not None else None
            log.append({"step": step, **key, "raw": reply.text, "parsed": value, "ok": value is not None,
                        "error": reply.error})
            parsed.append(value)
        return parsed

    # 1. traits of every thought
    keys, texts = [], []
    for i in ids:
        for side, gens in (("A", gens_a), ("B", gens_b)):
            keys.append({"id": i, "side": side})
            texts.append(prompts.TRAITS_EXTRACT_USER.format(prompt=_prompt_text(gens[i]), thought=cut(gens[i]["thought"])))
    lists = ask("extract", keys, texts, parse_string_list, 400)
    traits = {(k["id"], k["side"]): v for k, v in zip(keys, lists) if v}
    both = [i for i in ids if (i, "A") in traits and (i, "B") in traits]
    if not both:
        raise TraitsError("no prompt has parsed trait lists for both models (see traits_judgments.jsonl)")

    # 2. batch comparisons
    rng = random.Random(cfg.seed)
    batches = [rng.sample(both, min(cfg.batch_size, len(both))) for _ in range(cfg.n_batches)]
    texts = []
    for batch in batches:
        pairs = "\n\n".join(f"Prompt {n + 1}:\n  A: {json.dumps(traits[(i, 'A')])}\n  B: {json.dumps(traits[(i, 'B')])}"
                            for n, i in enumerate(batch))
        texts.append(prompts.TRAITS_COMPARE_USER.format(pairs=pairs))
    diffs = ask("compare", [{"batch": n} for n in range(len(batches))], texts, parse_trait_differences, 400)
    candidates = [d for batch in diffs if batch for d in batch]
    if not candidates:
        raise TraitsError("no batch comparison parsed (see traits_judgments.jsonl)")

    # 3. summary
    listing = "\n".join(f"- {c['trait']} (more in {c['more_in'] or '?'})" for c in candidates)
    summary = ask("summarize", [{"n_candidates": len(candidates)}],
                  [prompts.TRAITS_SUMMARIZE_USER.format(candidates=listing, max_traits=cfg.max_traits)],
                  parse_string_list, 600)[0]
    if not summary:
        raise TraitsError("the summary of trait differences did not parse (see traits_judgments.jsonl)")
    surviving = list(dict.fromkeys(summary))[: cfg.max_traits]

    # 4. head-to-head per trait
    keys, texts = [], []
    for trait in surviving:
        for i in ids:
            a_first = random.Random(f"{cfg.seed}:{trait}:{i}").random() < 0.5
            ta, tb = cut(gens_a[i]["thought"]), cut(gens_b[i]["thought"])
            keys.append({"trait": trait, "id": i, "a_first": a_first})
            texts.append(prompts.TRAITS_HEAD2HEAD_USER.format(trait=trait, prompt=_prompt_text(gens_a[i]),
                                                               thought_a=ta if a_first else tb,
                                                               thought_b=tb if a_first else ta))
    verdicts = ask("head2head", keys, texts, parse_winner, 50)
    rows = []
    for trait in surviving:
        wins_a = wins_b = ties = failed = 0
        for key, v in zip(keys, verdicts):
            if key["trait"] != trait:
                continue
            if v is None:
                failed += 1
            elif v == "tie":
                ties += 1
            elif (v == "A") == key["a_first"]:
                wins_a += 1
            else:
                wins_b += 1
        decided = wins_a + wins_b + ties
        rows.append(TraitRow(trait, wins_a, wins_b, ties, failed,
                             100.0 * (wins_a + 0.5 * ties) / decided if decided else float("nan")))

    with (out_dir / "traits_judgments.jsonl").open("w", encoding="utf-8") as fh:
        for entry in log:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    write_table(rows, out_dir, name_a, name_b)
    plot(rows, out_dir / "traits.png", name_a, name_b)
    summary_doc = {"model_a": name_a, "model_b": name_b, "n_prompts": len(ids), "n_batches": len(batches),
                   "traits": [asdict(r) for r in rows],
                   "judge_parse_failures": sum(1 for e in log if not e["ok"]), "judge_calls": len(log),
                   "judge": {**judge.describe(), "usage": judge.usage.to_dict()}}
    (out_dir / "traits.json").write_text(json.dumps(summary_doc, indent=2) + "\n")
    return summary_doc


@dataclass
class TraitRow:
    trait: str
    wins_a: int
    wins_b: int
    ties: int
    failed: int
    win_rate_a: float


def write_table(rows: list[TraitRow], out_dir: Path, name_a: str, name_b: str) -> None:
    with (out_dir / "traits.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["trait", f"wins_{name_a}", f"wins_{name_b}", "ties", "judge_failures", f"win_rate_{name_a}"])
        for r in rows:
            w.writerow([r.trait, r.wins_a, r.wins_b, r.ties, r.failed, f"{r.win_rate_a:.1f}"])
    lines = [f"| trait | {name_a} | {name_b} | tie | failed | {name_a} win rate |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.trait} | {r.wins_a} | {r.wins_b} | {r.ties} | {r.failed} | {r.win_rate_a:.1f} |" for r in rows]
    (out_dir / "traits.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(rows: list[TraitRow], path: Path, name_a: str, name_b: str) -> None:
    """Horizontal stacked bars: share of prompts where A shows the trait more, tie, B more."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    for y, r in enumerate(rows):
        total = max(1, r.wins_a + r.wins_b + r.ties)
        a, t = 100 * r.wins_a / total, 100 * r.ties / total
        ax.barh(y, a, color="#4C72B0", label=name_a if y == 0 else None)
        ax.barh(y, t, left=a, color="#CCCCCC", label="tie" if y == 0 else None)
        ax.barh(y, 100 - a - t, left=a + t, color="#DD8452", label=name_b if y == 0 else None)
    ax.set_yticks(range(len(rows)), [r.trait[:60] for r in rows])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of prompts where the thought shows the trait more")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
