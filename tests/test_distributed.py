"""Scale-out on this CPU machine: a 2-process gloo DDP run of SFT and GRPO, and the GPU check's tiny path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # its subprocess may take 900 s
def test_two_process_cpu_ddp_runs_sft_and_grpo_through_the_unchanged_cli(tmp_path):
    """torchrun --nproc_per_node 2 rlmt train {sft,grpo}: both finish, with the 2-process batch geometry.

    (bench/distributed_cpu.sh also runs PPO this way; it is left out here to keep the suite short.)
    """
    done = subprocess.run([sys.executable, str(ROOT / "bench/distributed_cpu.py"), str(tmp_path), "sft,grpo"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:] + "\n".join(
        p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
    assert "sft: rc=0 two-processes=True" in done.stdout and "grpo: rc=0 two-processes=True" in done.stdout
    assert (tmp_path / "sft-model/model.safetensors").is_file()
    assert (tmp_path / "grpo/final/selected.json").is_file()
    grpo_log = (tmp_path / "grpo.log").read_text()
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in grpo_log
    assert "[rank1]" in grpo_log  # the second process ran the DDP reducer


def test_gpu_check_runs_its_tiny_path_on_cpu():
    done = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--steps", "2"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no GPU: tiny CPU run" in done.stdout and "measured matmul" in done.stdout
    for algo in ("grpo", "ppo"):
        m = re.search(rf"{algo} summary: params ([\d.]+)M  rollout ([\d,]+) tok/s  update ([\d,]+) tok/s  MFU ([\d.]+)%",
                      done.stdout)
        assert m, done.stdout
        assert float(m.group(1)) > 0 and int(m.group(2).replace(",", "")) > 0 and int(m.group(3).replace(",", "")) > 0
        assert 0 < float(m.group(4)) < 100
    # PPO also trains the critic: more parameters than GRPO's policy alone
    params = [float(x) for x in re.findall(r"summary: params ([\d.]+)M", done.stdout)]
    assert params[1] > params[0]
