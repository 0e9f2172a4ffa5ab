"""How much of a model's IFEval score the token budget costs: re-answer a sample of its capped prompts with more.

    .venv/bin/python bench/ifeval_budget.py --workdir bench/runs/small                  # SmolLM2, untrained
    .venv/bin/python bench/ifeval_budget.py --workdir DIR --sample 0 --max-new-tokens 1280   # every capped prompt

Reads a finished run's IFEval answers of ``--model-name`` (``results/eval/<name>/ifeval/``), takes the prompts
whose answer stopped at the token limit (``finish_reason == "length"``), draws
``--sample`` of them (seeded; 0 = all), answers them again with the same model and decoding but
``--max-new-tokens``, through the pipeline's own ``rlmt eval generate`` and ``rlmt eval score``, and prints, for
prompt- and instruction-level strict and loose: the pass rate of the sample before and after, and the full set's
metric re-estimated with the sample's change scaled to every capped prompt (paired bootstrap 95 % CI over the
sampled prompts). Greedy decoding makes an answer that stopped before the old limit the same under a larger one,
so only capped prompts can change. Files go to ``<workdir>/ifeval_budget/<name>-<tokens>/``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlmt.jsonl import iter_json_lines  # noqa: E402 - the checkout's package, as small_experiment.py reads it

LEVELS = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")


def read_jsonl(path: Path) -> list[dict]:
    """Every object of a pipeline JSONL file; a malformed line is an error naming its file and line."""
    return [obj for _, obj in iter_json_lines(path, ValueError)]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def verdicts(row: dict, n_instructions: int) -> dict[str, tuple[int, int]]:
    """(passed, counted) per level for one IFEval per_item row, counted as the scorer counts: a level that is
    undecidable here (an unscorable instruction and no failed one) is left out of its denominator, an
    instruction without a verdict too, and a prompt without an answer fails at every level."""
    d = row["details"]
    if "prompt_strict" not in d:  # no answer
        return {"prompt_strict": (0, 1), "prompt_loose": (0, 1),
                "instruction_strict": (0, n_instructions), "instruction_loose": (0, n_instructions)}
    counts = {}
    for mode in ("strict", "loose"):
        ok = d[f"prompt_{mode}"]
        counts[f"prompt_{mode}"] = (0, 0) if ok is None else (int(bool(ok)), 1)
        judged = [i[mode] for i in d["instructions"] if i.get(mode) is not None]
        counts[f"instruction_{mode}"] = (sum(map(bool, judged)), len(judged))
    return counts


def estimate(before: dict[str, dict], after: dict[str, dict], sample: list[str], n_capped: int,
             n_instructions: dict[str, int], n_resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Per level (percent): the sample's pass rate before and after; the full set's metric before, and
    re-estimated with the sample's change in passes and in counted items scaled by n_capped / len(sample), with a
    bootstrap 95 % CI over the sampled prompts."""
    scale = n_capped / len(sample)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(sample), size=(n_resamples, len(sample)))
    counts_before = {i: verdicts(r, n_instructions[i]) for i, r in before.items()}
    counts_after = {i: verdicts(after[i], n_instructions[i]) for i in sample}
    out = {}
    for level in LEVELS:
        passed = sum(c[level][0] for c in counts_before.values())
        counted = sum(c[level][1] for c in counts_before.values())
        old = np.array([counts_before[i][level] for i in sample], dtype=float)
        new = np.array([counts_after[i][level] for i in sample], dtype=float)
        delta = new - old  # (passes, counted) per sampled prompt

        def rate(gain: np.ndarray) -> float:
            return 100.0 * (passed + scale * gain[0]) / (counted + scale * gain[1])

        lo, hi = np.quantile([rate(delta[idx].sum(axis=0)) for idx in picks], [0.025, 0.975])
        out[level] = {"sample_before": 100.0 * old[:, 0].sum() / old[:, 1].sum(),
                      "sample_after": 100.0 * new[:, 0].sum() / new[:, 1].sum(),
                      "full_before": 100.0 * passed / counted, "full_estimate": rate(delta.sum(axis=0)),
                      "ci_low": float(lo), "ci_high": float(hi)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "runs" / "small")
    ap.add_argument("--model-name", default="smollm2-instruct")
    ap.add_argument("--model", type=Path, help="default: <workdir>/results/models/<model-name>")
    ap.add_argument("--sample", type=int, default=64, help="capped prompts to re-answer (0: all of them)")
    ap.add_argument("--max-new-tokens", type=int, default=640)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    work = args.workdir.resolve()
    evaldir = work / "results" / "eval" / args.model_name / "ifeval"
    items = {r["id"]: r for r in read_jsonl(work / "results" / "data" / "benchmarks" / "ifeval" / "items.jsonl")}
    answers = {r["id"]: r for r in read_jsonl(evaldir / "generations.jsonl")}
    before = {r["id"]: r for r in read_jsonl(evaldir / "per_item.jsonl")}
    old_limit = json.loads((evaldir / "generations.jsonl.meta.json").read_text())["params"]["max_new_tokens"]
    if args.max_new_tokens <= old_limit:
        print(f"--max-new-tokens {args.max_new_tokens} is not above the run's {old_limit}", file=sys.stderr)
        return 2
    n_instructions = {i: len(r["reference"]["instruction_id_list"]) for i, r in items.items()}
    capped = sorted(i for i, a in answers.items() if a["finish_reason"] == "length")
    sample = sorted(random.Random(args.seed).sample(capped, args.sample)) if 0 < args.sample < len(capped) else capped
    out = work / "ifeval_budget" / f"{args.model_name}-{args.max_new_tokens}"
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "items.jsonl", [items[i] for i in sample])

    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlruns.db'}")
    data_dir = yaml.safe_load((work / "config.yaml").read_text()).get("data_dir")
    if not env.get("RLMT_DATA_DIR") and data_dir:  # relative to the project root, as in small_experiment.py
        env["RLMT_DATA_DIR"] = str((ROOT / data_dir).resolve())
    rlmt = [sys.executable, "-m", "rlmt.cli"]
    config = "results/.rlmt/config.yaml"
    model = args.model or work / "results" / "models" / args.model_name
    name = f"{args.model_name}-budget{args.max_new_tokens}"
    for cmd in ([*rlmt, "eval", "generate", "--config", config, "--model", str(model), "--model-name", name,
                 "--bench", "ifeval", "--prompts", str(out / "items.jsonl"),
                 "--max-new-tokens", str(args.max_new_tokens), "--out", str(out / "generations.jsonl")],
                [*rlmt, "eval", "score", "--config", config, "--bench", "ifeval", "--model-name", name,
                 "--items", str(out / "items.jsonl"), "--generations", str(out / "generations.jsonl"),
                 "--out", str(out / "scores.json")]):
        subprocess.run(cmd, cwd=work, env=env, check=True)
    after = {r["id"]: r for r in read_jsonl(out / "per_item.jsonl")}
    still = sum(r["finish_reason"] == "length" for r in read_jsonl(out / "generations.jsonl"))
    result = estimate(before, after, sample, len(capped), n_instructions, seed=args.seed)
    report = {"model": args.model_name, "old_max_new_tokens": old_limit, "max_new_tokens": args.max_new_tokens,
              "n_capped": len(capped), "n_sample": len(sample), "n_still_capped": still,
              "levels": result}
    (out / "budget.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.model_name}: {len(capped)} prompts hit the {old_limit}-token cap; {len(sample)} re-answered "
          f"with {args.max_new_tokens} ({still} hit that cap too)")
    print("| level | sample before | sample after | full set before | full set, estimated [95% CI] |")
    print("|---|---|---|---|---|")
    for level, r in result.items():
        print(f"| {level} | {r['sample_before']:.1f} | {r['sample_after']:.1f} | {r['full_before']:.1f} | "
              f"{r['full_estimate']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
