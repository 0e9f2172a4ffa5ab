"""GPU acceptance check of the real trainers: GRPO, PPO and DPO steps at the paper's sequence lengths, in 10 minutes.

What it runs (each part in its own process, :mod:`gpu_check_parts`; phases and their boundaries are listed there):

- **grpo**: ``train_grpo`` (TRL's GRPOTrainer) with vLLM colocated in sleep mode; prompts 1,024, completions 4,096;
- **ppo**: ``train_ppo`` (rlmt's actor-critic loop) with rollouts through its colocated vLLM engine; prompts 896,
  completions 4,096, gradient checkpointing, log-probs in 1,024-position chunks;
- **dpo**: ``prepare_pairs`` (8 samples per prompt through vLLM, scored by the reward model) and ``train_dpo`` (TRL's
  DPOTrainer, chosen + rejected cut at max_length 4,096, gradient checkpointing);

every setting from ``config/paper.yaml`` except batch sizes, step counts, checkpoints and validation. The model is
the Qwen2.5-0.5B body (24 layers, hidden 896, 14/2 heads, MLP 4,864) with random weights and the tiny zoo's Qwen
tokenizer (2,088 tokens), written as a safetensors model dir that vLLM loads; its end-of-sequence logits are pushed
far down (:func:`write_policy`), so every completion runs to the 4,096-token cap and every measured step has the
paper's widths. Prompts are longer than the limits and are left-truncated to exactly 1,024 / 896 tokens.
The reward model is the tiny zoo's (a 4-layer Llama scorer).

What it prints: per part, rollout tokens/s (tokens generated over the time in ``generate``), update tokens/s
(tokens of the step's padded batch over the update phase) and MFU (the traced FLOPs of those tokens, recomputation
included, over the update time, against the *measured* bf16 matmul rate of this card and against the datasheet:
the second is what ``preflight.mfu`` assumes); per phase, the peak of ``torch.cuda.max_memory_allocated``, the
peak of the card's used memory (NVML, polled; vLLM's memory and the CUDA context included) and the preflight's
estimate of the same job on one GPU (:mod:`gpu_check_estimates`); what it skipped and why. The same numbers go to
a JSON file (``--out``, else ``$OUT/gpu_check.json`` where ``$OUT`` is set, else the work dir).

Budget: ``--budget-s`` for everything (570 s, so that the script with its start-up ends inside 10 minutes). Each
part gets a share of what is left when it starts (GRPO and PPO 35 %, DPO 30 %), stops after ``--steps`` steps or
earlier when another step would pass its share (then it says so), and is killed 30 s after its share (the steps
and phases it finished still count). The first step includes warm-up: the rates are the mean of the later steps
where there are any. Where HF generate is too slow for the budget at 4,096 tokens, ``--completion`` shortens the
completions (the widths that ran are printed and the estimates follow them).

Where things are missing it runs what it can and says what it skipped: without CUDA (or ``--tiny``) the tiny zoo
model at a few tokens; without vLLM the rollouts use transformers' ``generate`` (``rollout.use_vllm: false``, named
"not the production path"); without TRL GRPO and the DPO update are skipped (DPO's pair sampling and PPO still
run); without mlflow a stand-in module with no active run is put on the parts' path (rlmt's tracking calls all
check ``mlflow.active_run()`` first). Wheels beyond a CUDA PyTorch image: ``bench/gpu_check_wheels.txt``.

    bash bench/gpu_check.sh                  # GPU: the paper's lengths
    bash bench/gpu_check.sh --wheels DIR     # first install the carried wheels in DIR (bench/gpu_check_wheels.txt)
    bash bench/gpu_check.sh --tiny           # any machine: the tiny zoo shape
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_check_parts import GIB, PARTS, Bench, installed, trl_usable

HERE = Path(__file__).resolve().parent
QWEN_05B_BODY = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2, head_dim=64, max_position_embeddings=32768)
# the paper's lengths (config/paper.yaml) and the bench's batch geometry; tiny: a few tokens for the CPU test
PAPER_SHAPE = dict(grpo_prompt=1024, ppo_prompt=896, completion=4096, dpo_max_length=4096, grpo_prompts_per_step=2,
                   grpo_generations=8, ppo_rows=8, ppo_micro=4, dpo_prompts=2, dpo_samples=8)
TINY_SHAPE = dict(grpo_prompt=32, ppo_prompt=28, completion=8, dpo_max_length=48, grpo_prompts_per_step=2,
                  grpo_generations=4, ppo_rows=4, ppo_micro=2, dpo_prompts=2, dpo_samples=4)
SHARES = {"grpo": 0.35, "ppo": 0.35, "dpo": 0.30}
KILL_GRACE_S = 30
RESERVE_S = 15  # kept back for the estimates' last seconds and the report
EOS_SUPPRESSION = 100.0
REQUIRED = ("torch", "transformers", "accelerate", "pydantic", "yaml", "polars", "safetensors")
MLFLOW_STAND_IN = '''"""Stand-in for mlflow written by bench/gpu_check.py where mlflow is not installed: no run is
ever active, so rlmt's tracking code (which checks mlflow.active_run() before any call) logs nothing. Any other use
fails."""


def active_run():
    return None
'''


# ----------------------------------------------------------------------------- inputs


def write_policy(zoo_policy: Path, out: Path, tiny: bool) -> Path:
    """The policy dir: the zoo's Qwen tokenizer with the zoo's tiny weights or the 0.5B body's random ones.

    End-of-sequence suppression: every embedding gets a large constant in dimension 0 and the output rows of the
    EOS and pad tokens -1 there, so after the final norm their logits sit ~24 below the rest (p(EOS) < 1e-18
    measured on the 0.5B body at temperature 0.7) while the other tokens stay near uniform. A random model would
    otherwise end most completions early, at random widths; this one samples the full 4,096 tokens as a long
    reasoning rollout does, so the memory and speed measured are those of the paper's widths.
    """
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

    from rlmt.models.loading import load_tokenizer
    from rlmt.train.rollout import eos_ids

    shutil.copytree(zoo_policy, out, dirs_exist_ok=True)
    if tiny:
        model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    else:
        base = AutoConfig.from_pretrained(str(out)).to_dict()
        base.pop("layer_types", None)  # sized for the zoo's depth; Qwen2Config derives it from the new depth
        config = Qwen2Config(**{**base, **QWEN_05B_BODY, "tie_word_embeddings": False})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    if model.config.tie_word_embeddings:
        raise ValueError("the EOS suppression needs separate input and output embeddings")
    tokenizer = load_tokenizer(out)
    # the pad token too: a sampled pad at the end of a row would be trimmed by the pair sampler's HF backend
    ends = sorted(eos_ids(model, tokenizer) | ({tokenizer.pad_token_id} - {None}))
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = EOS_SUPPRESSION
        model.get_output_embeddings().weight[ends, 0] = -1.0
    model.save_pretrained(str(out), safe_serialization=True)
    return out


def write_prompts(tokenizer, path: Path, n: int, min_tokens: int) -> None:
    """`n` distinct one-turn prompts of at least `min_tokens` tokens each under the policy's chat template."""
    import polars as pl

    from rlmt.train.runtime import prompt_tokens

    words = "plan write answer list short clear help code story kind calm bright".split()

    def messages(i: int, k: int) -> list[dict]:
        text = f"Request {i}: " + " ".join(words[(i + j) % len(words)] for j in range(k))
        return [{"role": "user", "content": text}]

    rows = []
    for i in range(n):
        hi = 4
        while prompt_tokens(tokenizer, messages(i, hi)) < min_tokens:
            hi *= 2
        lo = hi // 2
        while lo < hi:  # the fewest words that reach min_tokens
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if prompt_tokens(tokenizer, messages(i, mid)) < min_tokens else (lo, mid)
        rows.append({"id": str(i), "messages": messages(i, hi), "source": "bench",
                     "n_tokens": prompt_tokens(tokenizer, messages(i, hi))})
    pl.DataFrame(rows).write_parquet(path)


def write_inputs(work: Path, tiny: bool, steps: int, completion: int | None = None) -> Bench:
    from rlmt.models.loading import load_tokenizer
    from rlmt.models.tiny import build_zoo

    shape = {**(TINY_SHAPE if tiny else PAPER_SHAPE), **({"completion": completion} if completion else {})}
    zoo = build_zoo(work / "zoo", ["qwen-instruct", "reward"])
    policy = write_policy(zoo["qwen-instruct"], work / "policy", tiny)
    tokenizer = load_tokenizer(policy)
    n = max(shape["grpo_prompts_per_step"], shape["ppo_rows"]) * (steps + 1)
    # longer than both limits: GRPO and PPO left-truncate every prompt to exactly their limit
    write_prompts(tokenizer, work / "prompts.parquet", n, max(shape["grpo_prompt"], shape["ppo_prompt"]) + 8)
    import polars as pl

    pl.read_parquet(work / "prompts.parquet").head(shape["dpo_prompts"]).write_parquet(work / "dpo_prompts.parquet")
    bench = Bench(tiny=tiny, steps=steps, **shape, policy=str(policy), reward=str(zoo["reward"]),
                  prompts=str(work / "prompts.parquet"), dpo_prompt_file=str(work / "dpo_prompts.parquet"),
                  work=str(work))
    bench.save()
    return bench


# ----------------------------------------------------------------------------- processes


def part_env(work: Path) -> dict[str, str]:
    """The parts' environment: offline, rlmt and bench importable, a stand-in mlflow where none is installed."""
    env = dict(os.environ)
    paths = [str(HERE), str(HERE.parent)]
    if not installed("mlflow"):
        stand_in = work / "stand-in"
        (stand_in / "mlflow").mkdir(parents=True, exist_ok=True)
        (stand_in / "mlflow" / "__init__.py").write_text(MLFLOW_STAND_IN)
        paths.append(str(stand_in))
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def run_process(args: list[str], log: Path, env: dict[str, str], timeout_s: float) -> tuple[int | None, float]:
    """(exit code or None when killed at `timeout_s`, seconds); output to `log`."""
    began = time.monotonic()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = None
    return code, time.monotonic() - began


def tail(path: Path, lines: int = 25) -> str:
    text = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in text[-lines:])


# ----------------------------------------------------------------------------- the report


def datasheet(device_name: str) -> tuple[str, float] | None:
    """(key, dense bf16 TFLOP/s) from rlmt/resources/gpu_facts.yaml for this card, if it is listed."""
    from rlmt.preflight.gpu_job import load_gpus

    for key, gpu in load_gpus().items():
        if key.lower() in device_name.lower():
            return key, gpu.bf16_tflops
    return None


def summarize(result: dict[str, Any], estimate: dict[str, Any] | None, device: dict[str, Any]) -> dict[str, Any]:
    """Rates over the later steps (all when one), peaks over all records, MFU from the traced FLOPs per token."""
    records = result.get("records", [])
    steps = [r for r in records if r["kind"] == "step"]
    later = steps[1:] if len(steps) > 1 else steps
    sampling = [r for r in records if r["kind"] == "sampling"]
    rollout_records = sampling if sampling else later

    def total(rs, phase, key="seconds"):
        return sum(r["phases"].get(phase, {}).get(key, 0.0) for r in rs)

    out: dict[str, Any] = {"steps": len(steps)}
    gen_s = total(rollout_records, "generate")
    if gen_s > 0:
        out["rollout_tok_s"] = sum(r.get("generated", 0) for r in rollout_records) / gen_s
    upd_s = total(later, "update")
    if upd_s > 0:
        tokens = sum(r.get("update_tokens", 0) for r in later)
        out["update_tok_s"] = tokens / upd_s
        fpt = (estimate or {}).get("flops_per_update_token")
        if fpt:
            achieved = fpt * tokens / upd_s / 1e12
            out["achieved_tflops"] = achieved
            out["mfu_measured"] = achieved / device["matmul_tflops"]
            sheet = datasheet(device["name"]) if device["cuda"] else None
            if sheet:
                out["mfu_datasheet"] = achieved / sheet[1]
    memory = {}
    # a step cut off at the cap still measured the phases it finished
    for r in [*records, {"phases": result.get("unfinished") or {}}]:
        for name, p in r["phases"].items():
            m = memory.setdefault(name, {"torch_peak": 0, "device_peak": 0, "seconds": 0.0})
            m["torch_peak"] = max(m["torch_peak"], p["torch_peak"])
            m["device_peak"] = max(m["device_peak"], p["device_peak"])
    for name, est in ((estimate or {}).get("phases") or {}).items():
        memory.setdefault(name, {})["estimate"] = est
    out["memory"] = memory
    widths = [(r.get("prompt_width"), r.get("completion_width")) for r in steps]
    out["widths"] = sorted({w for w in widths if w[0] is not None})
    return out


def fmt_rate(x: float | None) -> str:
    return f"{x:,.0f}" if x is not None else "-"


def fmt_pct(x: float | None) -> str:
    return f"{100 * x:.2f}%" if x is not None else "n/a"


def fmt_gib(x: float | None) -> str:
    return f"{x / GIB:.2f}" if x else "n/a"


def print_report(report: dict[str, Any]) -> None:
    device, parts = report["device"], report["parts"]
    print("\n== gpu_check summary ==")
    sheet = report.get("datasheet")
    print(f"device: {device['name']}  dtype: {device['dtype']}  measured matmul: {device['matmul_tflops']:.2f} TFLOP/s"
          f"  datasheet: {f'{sheet[1]:g} TFLOP/s ({sheet[0]})' if sheet else 'n/a'}")
    header = f"{'part':5} {'status':10} {'steps':5} {'rollout tok/s':>13} {'update tok/s':>12} {'MFU matmul':>10} " \
             f"{'MFU sheet':>9}  rollout"
    print(header)
    for name, p in parts.items():
        s = p.get("summary", {})
        steps = f"{s.get('steps', 0)}/{report['steps']}" if p["status"] != "skipped" else "-"
        print(f"{name:5} {p['status']:10} {steps:5} {fmt_rate(s.get('rollout_tok_s')):>13} "
              f"{fmt_rate(s.get('update_tok_s')):>12} {fmt_pct(s.get('mfu_measured')):>10} "
              f"{fmt_pct(s.get('mfu_datasheet')):>9}  {p.get('rollout', p.get('reason', ''))}")
    print("\nmemory per phase, GiB (torch: peak torch.cuda.max_memory_allocated; device: peak used memory of the "
          "card as NVML reports it, polled every 20 ms, n/a without pynvml; estimate: the preflight's tracer, this "
          "job on one GPU)")
    print(f"{'part':5} {'phase':8} {'torch':>7} {'device':>7} {'estimate':>8}  estimate holds")
    for name, p in parts.items():
        for phase in ("generate", "score", "pairs", "update"):
            m = p.get("summary", {}).get("memory", {}).get(phase)
            if m is None:
                continue
            est = m.get("estimate") or {}
            print(f"{name:5} {phase:8} {fmt_gib(m.get('torch_peak')):>7} {fmt_gib(m.get('device_peak')):>7} "
                  f"{fmt_gib(est.get('bytes')):>8}  {est.get('holds', p.get('estimate_error', 'not traced'))}")
    for name, p in parts.items():
        s = p.get("summary", {})
        if p["status"] == "skipped":
            continue
        params = f"params {p['params'] / 1e6:.1f}M  " if p.get("params") else ""
        print(f"{name} summary: {params}rollout {fmt_rate(s.get('rollout_tok_s'))} "
              f"tok/s  update {fmt_rate(s.get('update_tok_s'))} tok/s  MFU {fmt_pct(s.get('mfu_measured'))} of "
              f"measured matmul, {fmt_pct(s.get('mfu_datasheet'))} of datasheet  widths {s.get('widths')}")
    for line in report["skipped"]:
        print(f"skipped: {line}")
    for name, p in parts.items():
        for note in p.get("notes", []):
            print(f"note: {name}: {note}")
    print(f"elapsed {report['elapsed_s']:.0f} s of the {report['budget_s']:.0f} s budget; results: {report['json']}")


# ----------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny zoo shape (the default without CUDA)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per part (default 2)")
    parser.add_argument("--completion", type=int, default=None,
                        help="completion tokens instead of the paper's 4,096 (e.g. where HF generate is too slow for "
                             "the budget; the widths are reported)")
    parser.add_argument("--budget-s", type=float, default=570.0,
                        help="wall-clock budget for everything after start-up (default 570)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of grpo,ppo,dpo")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and logs here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="the JSON results (default $OUT/gpu_check.json)")
    args = parser.parse_args()
    began = time.monotonic()

    missing = [m for m in REQUIRED if not installed(m)]
    if missing or not installed("rlmt"):
        print(f"gpu_check cannot run: missing {missing + ([] if installed('rlmt') else ['rlmt'])} "
              f"(the wheels to carry: bench/gpu_check_wheels.txt)")
        return 2
    import torch

    cuda = torch.cuda.is_available()
    tiny = args.tiny or not cuda
    wanted = [p for p in args.parts.split(",") if p]
    if unknown := set(wanted) - set(PARTS):
        parser.error(f"unknown parts {sorted(unknown)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    out_json = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else
                            work / "gpu_check.json")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    logs = out_json.parent
    env = part_env(work)
    have = {m: installed(m) for m in ("trl", "vllm", "deepspeed", "mlflow")}
    print("installed: " + ", ".join(f"{m} {'yes' if v else 'no'}" for m, v in have.items()), flush=True)

    # the device's facts in a process of their own: this one never makes a CUDA context beside the parts'
    code, _ = run_process([str(HERE / "gpu_check_parts.py"), "device", "--work", str(work)],
                          logs / "gpu_check-device.log", env, 120)
    if code != 0:
        print("device check failed:\n" + tail(logs / "gpu_check-device.log"))
        return 1
    device = json.loads((work / "device.json").read_text())
    print(f"device: {device['name']}  dtype: {device['dtype']}  shape: {'tiny' if tiny else 'qwen2.5-0.5b body'}  "
          f"measured matmul: {device['matmul_tflops']:.2f} TFLOP/s", flush=True)

    bench = write_inputs(work, tiny, args.steps, args.completion)
    print(f"inputs in {work} ({time.monotonic() - began:.0f} s)", flush=True)
    vllm_ok = cuda and have["vllm"]
    skipped: list[str] = []
    if not vllm_ok:
        skipped.append("vLLM rollouts (GRPO colocated, PPO's engine, DPO's sampler): "
                       + ("no CUDA device" if not cuda else "vllm is not installed")
                       + "; the parts that ran sampled with transformers' generate")
    if not have["deepspeed"]:
        skipped.append("nothing for want of DeepSpeed (not installed): a one-GPU run uses none; ZeRO runs only under "
                       "the multi-GPU launchers")
    trl_ok, trl_why_not = trl_usable()
    runnable = [p for p in wanted if p != "grpo" or trl_ok]

    # the estimates trace on the CPU beside the parts, with CUDA hidden
    est_env = {**env, "CUDA_VISIBLE_DEVICES": ""}
    est_args = [str(HERE / "gpu_check_estimates.py"), "--work", str(work), "--parts", ",".join(runnable),
                "--bf16", str(int(device["dtype"] == "bfloat16")), "--vllm", str(int(vllm_ok))]
    if device.get("total_memory"):
        est_args += ["--gpu-memory", str(device["total_memory"])]
    est_log = (logs / "gpu_check-estimates.log").open("w")
    estimator = subprocess.Popen([sys.executable, *est_args], stdout=est_log, stderr=subprocess.STDOUT, env=est_env,
                                 start_new_session=True)

    parts: dict[str, dict[str, Any]] = {}
    for part in wanted:
        if part not in runnable:
            parts[part] = {"status": "skipped", "reason": f"needs TRL's GRPOTrainer: {trl_why_not}"}
            skipped.append(f"{part}: {trl_why_not}")
            continue
        left = args.budget_s - (time.monotonic() - began) - RESERVE_S
        share = SHARES[part] / sum(SHARES[p] for p in runnable[runnable.index(part):])
        cap = max(left * share - KILL_GRACE_S, 1)
        print(f"{part}: starting, cap {cap:.0f} s", flush=True)
        log = logs / f"gpu_check-{part}.log"
        code, seconds = run_process([str(HERE / "gpu_check_parts.py"), part, "--work", str(work),
                                     "--deadline-s", f"{cap:.0f}"], log, env, cap + KILL_GRACE_S)
        result_file = work / f"{part}.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else {"records": [], "notes": []}
        if code is None:
            result["status"] = "timed out"
            result["notes"] = result.get("notes", []) + [f"killed after {seconds:.0f} s (cap {cap:.0f} s + "
                                                         f"{KILL_GRACE_S} s)"]
        elif code != 0 or result.get("status") != "ran":
            result["status"] = "failed"
        if result.get("update_skipped"):
            result["status"] = "partial"
            skipped.append(f"{part} update: {result['update_skipped']}")
        parts[part] = result
        print(f"{part}: {result['status']} in {seconds:.0f} s" + (f" ({result.get('stopped')})" if result.get("stopped")
                                                                  else ""), flush=True)
        if result["status"] in ("failed", "timed out"):
            print(f"{part}: {result.get('error', '')}\n{tail(log)}", flush=True)

    left = args.budget_s - (time.monotonic() - began) - 5
    try:
        estimator.wait(timeout=max(left, 1))
    except subprocess.TimeoutExpired:
        os.killpg(estimator.pid, 9)
        estimator.wait()
    est_log.close()
    estimates = json.loads((work / "estimates.json").read_text()) if (work / "estimates.json").is_file() else {}

    for part, result in parts.items():
        if result["status"] == "skipped":
            continue
        est = estimates.get(part)
        if est is None or "error" in est:
            result["estimate_error"] = (est or {}).get("error", "not traced: the tracer did not finish in the budget")
            est = None
        result["summary"] = summarize(result, est, device)
        result["params"] = max((r.get("params", 0) for r in result.get("records", [])), default=0)
        traced_width = (est["widths"]["prompt"], est["widths"]["completion"]) if est else None
        if traced_width and any(w != traced_width for w in result["summary"]["widths"]):
            result.setdefault("notes", []).append(f"ran at widths {result['summary']['widths']}, estimated at "
                                                  f"{traced_width}: the MFU and the estimates are approximate")
    report = {"device": device, "datasheet": datasheet(device["name"]) if cuda else None, "tiny": tiny,
              "steps": args.steps, "budget_s": args.budget_s, "environment": have, "parts": parts,
              "skipped": skipped, "estimates": estimates, "work": str(work), "json": str(out_json),
              "elapsed_s": time.monotonic() - began}
    out_json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print_report(report)
    bad = [p for p, r in parts.items() if r["status"] in ("failed", "timed out")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
