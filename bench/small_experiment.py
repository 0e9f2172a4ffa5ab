"""Run the small real-model experiment (config/small.yaml) from a clean results dir and report it.

    .venv/bin/python bench/small_experiment.py                       # the whole config, in bench/runs/small/
    .venv/bin/python bench/small_experiment.py --workdir DIR --overlay tests/small_overlay.yaml
    .venv/bin/python bench/small_experiment.py --continue TARGET...  # go on with an interrupted run, to some targets
    .venv/bin/python bench/small_experiment.py --workdir DIR --table-only  # the table of a finished run, again

Snakemake runs in ``--workdir`` (its ``results/`` must not exist: a clean run, never a partly cached one)
with the config file(s) given; ``--overlay`` files are merged over the config first (nested mappings merged,
other values replaced, a null value removes its key) into ``<workdir>/config.yaml``. Printed at the end: the
wall time, the peak memory of the whole job tree (the largest sum of RSS over Snakemake and every process under
it, sampled every ``--sample-s`` seconds: an underestimate by at most what a job allocates and frees between two
samples), the machine's load average before the run, and the results tables (``table()``, also written to
``<workdir>/small_experiment.md``): per cell the raw and length-controlled win rates, IFEval, the format rate, the
within-step reward-length correlation of its rollouts and its length verdict; then the head-to-head comparisons
on the same prompts (think against no-think, a length-corrected reward's cell against the plain one's).
``--continue`` goes on with an interrupted run in the same workdir (Snakemake redoes only what is missing;
generation files resume where they stopped) and appends its part's wall time, peak and table to that file; the
first header's wall time is then not the whole run's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base`: nested mappings merged, other values replaced, a null value removes the key."""
    out = dict(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def effective_config(config: Path, overlays: list[Path]) -> dict:
    cfg = yaml.safe_load(config.read_text())
    for path in overlays:
        cfg = merge(cfg, yaml.safe_load(path.read_text()) or {})
    return cfg


def job_label(cmdline: list[str]) -> str | None:
    """'train grpo CELL' for a pipeline command (``python -m rlmt.cli train grpo --cell CELL ...``), else None."""
    if "rlmt.cli" not in cmdline:
        return None
    args = cmdline[cmdline.index("rlmt.cli") + 1:]
    words = []
    for a in args:
        if a.startswith("-"):
            break
        words.append(a)
    for flag in ("--cell", "--policy-name", "--model-name", "--out"):
        if flag in args[:-1]:
            words.append(args[args.index(flag) + 1])
            break
    if "--bench" in args[:-1]:
        words.append(args[args.index("--bench") + 1])
    return " ".join(words)


def tree_snapshot(pid: int) -> tuple[int, frozenset[str]]:
    """RSS of `pid` and all its descendants now (processes that vanish meanwhile count as 0), and the pipeline
    commands running among them."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, frozenset()
    total, labels = 0, set()
    for p in procs:
        try:
            total += p.memory_info().rss
            label = job_label(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if label:
            labels.add(label)
    return total, frozenset(labels)


class PeakSampler(threading.Thread):
    """The peak of the job tree's RSS sum, overall and per set of pipeline commands running at the time."""

    def __init__(self, pid: int, every_s: float):
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak, self._done = pid, every_s, 0, threading.Event()  # not _stop: that would shadow the Thread method join() calls
        self.peak_by_jobs: dict[frozenset[str], int] = {}

    def run(self) -> None:
        while not self._done.is_set():
            total, labels = tree_snapshot(self.pid)
            self.peak = max(self.peak, total)
            if labels:
                self.peak_by_jobs[labels] = max(self.peak_by_jobs.get(labels, 0), total)
            self._done.wait(self.every_s)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def stage_lines(self, top: int = 6) -> list[str]:
        """The `top` largest peaks by the pipeline commands running then, largest first."""
        ranked = sorted(self.peak_by_jobs.items(), key=lambda kv: -kv[1])[:top]
        return [f"  - {peak / 2**30:.2f} GiB: {' + '.join(sorted(jobs))}" for jobs, peak in ranked]


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _metric(scores: dict | None, name: str) -> str:
    if not scores or name not in scores.get("metrics", {}):
        return "n/a"
    m = scores["metrics"][name]
    if m.get("value") is None:  # e.g. win_rate_both_answered with no item both answered (n = 0)
        return "n/a"
    ci = f" [{m['ci_low']:.1f}, {m['ci_high']:.1f}]" if m.get("ci_low") is not None else ""
    return f"{m['value']:.1f}{ci}"


# The extraction issues (rlmt.thinking) of an output whose thought leaked past its delimiter: the answer holds
# '<think>' or a second '</think>' (a policy looping on its thought after answering shows here).
LEAK_ISSUES = ("repeated-delimiter", "think-tag-in-answer")


def _format_stats(generations: Path) -> tuple[str, str, str]:
    """(format rate %, share % of outputs with a thinking tag in the answer, mean thought length in words) of a
    generations file."""
    if not generations.is_file():
        return "n/a", "n/a", "n/a"
    sys.path.insert(0, str(ROOT))
    from rlmt.jsonl import iter_json_lines

    rows = [row for _, row in iter_json_lines(generations, ValueError)]
    if not rows:
        return "n/a", "n/a", "n/a"
    rate = 100.0 * sum(bool(r["well_formed"]) for r in rows) / len(rows)
    leaked = 100.0 * sum(any(i in LEAK_ISSUES for i in r.get("issues") or ()) for r in rows) / len(rows)
    thoughts = [len((r.get("thought") or "").split()) for r in rows]
    return f"{rate:.1f}", f"{leaked:.1f}", f"{sum(thoughts) / len(thoughts):.0f}"


def _winrate_both(scores: dict | None) -> str:
    """The win rate over the prompts where both models answered, with its n (reward-winrate metric version 4)."""
    if not scores or "win_rate_both_answered" not in scores.get("metrics", {}):
        return "n/a"
    return f"{_metric(scores, 'win_rate_both_answered')} (n={scores['metrics']['win_rate_both_answered']['n']})"


def _length_columns(run_dir: Path) -> tuple[str, str]:
    """(the within-step reward-length Spearman over the run's rollouts: mean [min, max] over steps; the length
    verdict) of a trained cell (rlmt.diagnostics files in its checkpoint dir)."""
    from rlmt.diagnostics import load_verdict, read_rollouts
    from rlmt.report.length_figures import step_correlations

    rhos = [rho for _, _, rho in step_correlations(read_rollouts(run_dir)) if rho is not None]
    corr = f"{sum(rhos) / len(rhos):+.2f} [{min(rhos):+.2f}, {max(rhos):+.2f}]" if rhos else "n/a"
    verdict = load_verdict(run_dir)
    return corr, (verdict.label if verdict else "n/a")


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _pair_line(label: str, a: str, b: str, numbers: dict) -> str:
    def ci(v, lo, hi):
        return "n/a" if _missing(v) else f"{v:.1f}" + ("" if _missing(lo) else f" [{lo:.1f}, {hi:.1f}]")

    return (f"| {label} | {a} | {b} | {numbers['n_paired']} | "
            f"{ci(numbers['win_rate'], numbers['ci_low'], numbers['ci_high'])} | "
            f"{ci(numbers['lc_win_rate'], numbers['lc_ci_low'], numbers['lc_ci_high'])} | "
            f"{numbers['n_both_answered']} | "
            + ("n/a" if _missing(numbers["mean_word_difference"]) else f"{numbers['mean_word_difference']:+.1f}") + " |")


def head_to_head_lines(plan, res: Path) -> list[str]:
    """Paired comparisons on the same held-out prompts and reward model: each think cell against its no-think
    twin, and each cell on a length-corrected reward against the same cell on the reward it corrects."""
    from rlmt.report.head_to_head import paired, read_answers, tie_tolerance, twins

    pairs = [("think vs no-think", t, n) for t, n in twins(plan)]
    for cell in plan.cells:
        base = getattr(plan.cfg.reward_models[cell.rm], "base", None)
        if base is not None:
            plain = cell.model_copy(update={"rm": base}).name
            if plain in plan.cell_by_name:
                pairs.append((f"{cell.rm} vs {base}", cell.name, plain))
    lines = ["", "Head to head, paired over the held-out prompts (the win-rate reward model; LC: read at equal "
             "answer length; word difference: first minus second, over the prompts both answered):", "",
             "| comparison | first | second | prompts | win rate of first [95% CI] | LC win rate [95% CI] | "
             "both answered | mean word difference |", "|---|---|---|---|---|---|---|---|"]
    for label, a, b in pairs:
        fa, fb = (res / "eval" / c / "reward-winrate" / "per_item.jsonl" for c in (a, b))
        if not (fa.is_file() and fb.is_file()):
            lines.append(f"| {label} | {a} | {b} | n/a | n/a | n/a | n/a | n/a |")
            continue
        tol = tie_tolerance(fa.with_name("scores.json"), fb.with_name("scores.json"))
        lines.append(_pair_line(label, a, b, paired(read_answers(fa), read_answers(fb), tol)))
    return lines if pairs else []


def table(workdir: Path, cfg: dict) -> str:
    """The results tables of a finished run, read from its files (scores.json, per-item files, generations,
    rollout diagnostics, rm_eval.json, calibration.json)."""
    sys.path.insert(0, str(ROOT))
    from rlmt.config import parse_config
    from rlmt.workflow import Plan

    res = workdir / "results"
    plan = Plan(parse_config(cfg), root=str(res))
    lines = []
    for rm in plan.trained_reward_models():
        ev = _json(res / "models" / rm / "rm_eval.json")
        if ev:
            held = ev["held_out"]
            lines.append(f"Reward model {rm}: held-out pairwise accuracy {100 * held['pairwise_accuracy']:.1f} % "
                         f"on {held['n']} pairs ({ev['train_pairs']} training pairs, train loss {ev['train_loss']:.3f})")
        else:
            lines.append(f"Reward model {rm}: no rm_eval.json")
    from rlmt.report.rewards_section import reward_rows

    for row in reward_rows(plan):  # the report's Rewards lines (the classifiers are above)
        if row.kind != "classifier":
            lines.append(f"Reward {row.name} ({row.kind}): {row.description}")
    lines += ["", "| cell | reference | reward win rate [95% CI] | LC win rate [95% CI] | win rate, both answered | "
              "IFEval prompt strict | prompt loose | inst strict | inst loose | format rate % (IFEval) | "
              "tag in answer % (IFEval) | thought words (IFEval) | reward-length Spearman in rollouts, mean "
              "[min, max] over steps | length verdict |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    baselines = plan.cfg.evaluation.baselines  # untrained models: IFEval only, no win rate
    for cell in [*plan.cell_names, *baselines]:
        wr = _json(res / "eval" / cell / "reward-winrate" / "scores.json")
        ife = _json(res / "eval" / cell / "ifeval" / "scores.json")
        rate, leaked, thought = _format_stats(res / "eval" / cell / "ifeval" / "generations.jsonl")
        ife_metrics = [_metric(ife, k) for k in ("prompt_strict", "prompt_loose",
                                                   "instruction_strict", "instruction_loose")]
        reference = "(untrained)" if cell in baselines else plan.winrate_reference(cell)
        corr, verdict = ("n/a", "n/a") if cell in baselines else _length_columns(Path(plan.checkpoint_dir(cell)))
        lines.append(f"| {cell} | {reference} | {_metric(wr, 'win_rate')} | {_metric(wr, 'lc_win_rate')} | "
                     f"{_winrate_both(wr)} | " + " | ".join(ife_metrics)
                     + f" | {rate} | {leaked} | {thought} | {corr} | {verdict} |")
    lines += head_to_head_lines(plan, res)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config" / "small.yaml")
    ap.add_argument("--overlay", type=Path, action="append", default=[], help="Merged over the config (repeatable).")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench" / "runs" / "small")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--sample-s", type=float, default=1.0)
    ap.add_argument("--timeout-s", type=float, default=None, help="Stop Snakemake after this long (exit 124).")
    ap.add_argument("--continue", dest="resume", action="store_true",
                    help="Continue an interrupted run in --workdir (its results/ and config.yaml kept; the wall "
                         "time and peak memory printed are this invocation's only, and the header says so).")
    ap.add_argument("--table-only", action="store_true",
                    help="Print the results table of the finished run in --workdir (its config.yaml and results/), "
                         "run nothing.")
    ap.add_argument("targets", nargs="*", default=["all"],
                    help="Snakemake targets (default: all), e.g. the win-rate scores.json files alone.")
    args = ap.parse_args(argv)

    workdir = args.workdir.resolve()
    if args.table_only:
        if not (workdir / "config.yaml").is_file():
            print(f"--table-only: {workdir / 'config.yaml'} does not exist (no run there)", file=sys.stderr)
            return 2
        print(table(workdir, yaml.safe_load((workdir / "config.yaml").read_text())))
        return 0
    if args.resume:
        if not (workdir / "config.yaml").is_file():
            print(f"--continue: {workdir / 'config.yaml'} does not exist (nothing to continue)", file=sys.stderr)
            return 2
    elif (workdir / "results").exists():
        print(f"{workdir / 'results'} exists: the bench runs from a clean results dir; remove it or pick another "
              "--workdir", file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    if args.resume:  # the interrupted run's own config, byte for byte: nothing upstream reruns
        cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    else:
        cfg = effective_config(args.config, args.overlay)
        (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = dict(os.environ)
    # data_dir is relative to the project root in the config; the run's working directory is elsewhere
    if not env.get("RLMT_DATA_DIR") and cfg.get("data_dir"):
        env["RLMT_DATA_DIR"] = str((ROOT / cfg["data_dir"]).resolve())
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlruns.db'}")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    load = os.getloadavg()
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           f"--configfile={workdir / 'config.yaml'}", "--cores", args.cores, *args.targets]
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    with open(workdir / "snakemake.log", "a" if args.resume else "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        sampler = PeakSampler(proc.pid, args.sample_s)
        sampler.start()
        try:
            rc = proc.wait(timeout=args.timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait()
            rc = 124
        sampler.stop()
    wall = time.monotonic() - start
    header = (f"# Small experiment run, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
              f"- config: {args.config}{''.join(f' + {o}' for o in args.overlay)}\n"
              f"- machine: {platform.node()}, {os.cpu_count()} CPUs, load average before the run "
              f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)\n"
              f"- targets: {' '.join(args.targets)}\n"
              + (f"- continued an interrupted run: the wall time and peak below are this part's only\n"
                 if args.resume else "")
              + f"- snakemake exit status: {rc}\n"
              f"- wall time: {wall / 60:.1f} min\n"
              f"- peak memory of the job tree: {sampler.peak / 2**30:.2f} GiB (RSS sum, sampled every {args.sample_s:g} s)\n"
              + "- largest peaks by the pipeline commands running at the time:\n"
              + "".join(line + "\n" for line in sampler.stage_lines()))
    text = header + "\n" + table(workdir, cfg) + "\n"
    with open(workdir / "small_experiment.md", "a" if args.resume else "w") as fh:
        fh.write(text + "\n")
    print(text)
    if rc != 0:
        print(f"snakemake failed (exit {rc}); see {workdir / 'snakemake.log'} and {workdir / 'results/logs'}",
              file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
