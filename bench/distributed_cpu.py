"""A 2-process CPU (gloo) DDP run of SFT, GRPO and PPO on the tiny zoo, through the unchanged CLI.

``torchrun --nproc_per_node 2 --no-python rlmt train ...`` with ``ACCELERATE_USE_CPU=true``:
accelerate (and with it TRL's trainers) then picks DistributedType.MULTI_CPU with the gloo
backend. The HF Trainer's own log line "Gradient Accumulation steps" shows the geometry: with
global_batch_size 8 and 4 per device, 2 processes need 1 accumulation step (1 process: 2); PPO
prints the number of processes it split each step's prompts over.

    python bench/distributed_cpu.py WORKDIR [sft,grpo,ppo]   # one line per stage; non-zero exit on failure
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import yaml

ROOT = Path(__file__).resolve().parents[1]
CELL = "grpo__llama-base__warm-start__think__tiny-rm__demo"
PPO_CELL = "ppo__llama-base__warm-start__think__tiny-rm__demo"


def prepare(work: Path) -> dict[str, Path]:
    from rlmt.models.tiny import build_zoo
    from rlmt.thinking import WARM_THINK, sft_messages

    zoo = build_zoo(work / "zoo", ["llama-instruct", "reward"])
    words = "plan write answer the user list short clear help code story kind calm".split()
    rows = [json.dumps({"id": str(i), "messages": sft_messages([{"role": "user", "content": f"Tell me about {w}"}],
                                                                f"I plan {w}", f"{w} is {words[(i + 3) % 13]}",
                                                                WARM_THINK)})
            for i, w in enumerate(words * 2)]
    (work / "sft.jsonl").write_text("\n".join(rows[:16]) + "\n")
    demo = [json.loads(line) for line in (ROOT / "rlmt/resources/demo_prompts.jsonl").read_text().splitlines()][:8]
    pl.DataFrame([{"id": r["id"], "messages": r["messages"], "source": "demo", "n_tokens": 20} for r in demo]) \
        .write_parquet(work / "train.parquet")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["algorithms"]["sft"] = {"learning_rate": 1e-3, "num_train_epochs": 1, "global_batch_size": 8,
                                "per_device_train_batch_size": 4, "max_length": 128, "save_steps": 100}
    cfg["algorithms"]["grpo"] = {"learning_rate": 1e-4, "prompts_per_step": 2, "num_generations": 4,
                                 "per_device_train_batch_size": 4, "max_steps": 2,
                                 "rollout": {"max_prompt_length": 256, "max_completion_length": 8},
                                 "checkpoints": {"save_steps": 2}, "log_samples_every": 100}
    cfg["algorithms"]["ppo"] = {"learning_rate": 1e-4, "prompts_per_step": 4, "mini_batch_size": 2,
                                "micro_batch_size": 2, "max_steps": 2, "val_prompts": 2,
                                "rollout": {"max_prompt_length": 256, "max_completion_length": 8},
                                "checkpoints": {"save_steps": 2}, "log_samples_every": 100}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return zoo


def torchrun(args: list[str], work: Path, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "info",
           "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns.db'}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "--no-python", *args]
    return subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True, timeout=900)


def main(work: Path, stages: list[str]) -> int:
    work.mkdir(parents=True, exist_ok=True)
    zoo = prepare(work)
    config = str(work / "config.yaml")
    runs = {
        "sft": ["rlmt", "train", "sft", "--config", config, "--model", str(zoo["llama-instruct"]),
                "--data", str(work / "sft.jsonl"), "--out", str(work / "sft-model")],
        "grpo": ["rlmt", "train", "grpo", "--config", config, "--cell", CELL, "--policy", str(work / "sft-model"),
                 "--reward-model", str(zoo["reward"]), "--train", str(work / "train.parquet"),
                 "--out", str(work / "grpo")],
        "ppo": ["rlmt", "train", "ppo", "--config", config, "--cell", PPO_CELL, "--policy", str(work / "sft-model"),
                "--reward-model", str(zoo["reward"]), "--train", str(work / "train.parquet"),
                "--val", str(work / "train.parquet"), "--out", str(work / "ppo")],
    }
    failed = 0
    for i, (stage, args) in enumerate((s, runs[s]) for s in stages):
        done = torchrun(args, work, 29611 + i)
        (work / f"{stage}.log").write_text(done.stdout + done.stderr)
        log = done.stdout + done.stderr
        two_processes = "Gradient Accumulation steps = 1" in log or "ppo: 2 processes (MULTI_CPU)" in log
        print(f"{stage}: rc={done.returncode} two-processes={two_processes} log={work / f'{stage}.log'}")
        failed += not two_processes
        failed += done.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/rlmt-distributed-cpu"),
                  (sys.argv[2] if len(sys.argv) > 2 else "sft,grpo,ppo").split(",")))
