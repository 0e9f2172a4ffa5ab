"""Launching training: plain python, accelerate on one node, one launcher per node on Slurm.

The Slurm job is rendered with snakemake-executor-plugin-slurm's own submit-string code and run
through stand-ins for ``srun``, ``scontrol`` and ``accelerate`` that record what each node starts.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlmt.config import Resources
from rlmt.launch import launch_command, launch_prefix, slurm_resources

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["rlmt", "train", "grpo", "--config", "config/paper.yaml", "--cell", "grpo__x", "--out", "results/ck"]


class JobResources(dict):
    """What the plugin reads: ``job.resources.get(key)`` and ``job.resources.key``."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def render_sbatch(resources: dict) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    job = SimpleNamespace(resources=JobResources(resources), threads=1)
    params = {"run_uuid": "uuid", "slurm_logfile": "log", "comment_str": "rule_train", "account": "-A acct",
              "partition": "-p gpu", "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job)


def fake_cluster(tmp_path: Path, nodes: list[str]) -> dict[str, str]:
    """srun runs its command once per node (SLURM_NODEID set); accelerate records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "launchers.jsonl"
    scripts = {
        "srun": f"""#!/usr/bin/env python3
import os, subprocess, sys
args = sys.argv[1:]
opts = {{}}
while args and args[0].startswith("--"):
    key, _, value = args.pop(0)[2:].partition("=")
    opts[key] = value
assert opts.get("ntasks-per-node") == "1", opts
procs = [subprocess.Popen(args, env={{**os.environ, "SLURM_NODEID": str(i), "SLURM_JOB_NODELIST": "gpu[01-{len(nodes):02d}]"}})
         for i in range(int(opts["nodes"]))]
sys.exit(max(p.wait() for p in procs))
""",
        "scontrol": "#!/usr/bin/env bash\nprintf '%s\\n' " + " ".join(nodes) + "\n",
        "accelerate": f"""#!/usr/bin/env python3
import json, os, sys
with open({str(record)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "node": os.environ.get("SLURM_NODEID")}}) + "\\n")
""",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_single_process_runs_the_command_itself():
    assert launch_prefix(Resources()) == ""
    assert launch_command(Resources(), TRAIN) == " ".join(TRAIN)


def test_one_node_with_eight_gpus_is_one_accelerate_launcher_with_eight_processes():
    res = Resources(gpus=8, launcher="accelerate", accelerate_config="config/accelerate/zero2.yaml")
    cmd = launch_command(res, TRAIN).split()
    assert cmd[:2] == ["accelerate", "launch"] and option(cmd, "--num_processes") == "8"
    assert option(cmd, "--num_machines") == "1" and option(cmd, "--config_file") == "config/accelerate/zero2.yaml"
    assert cmd[cmd.index("--no_python") + 1:] == TRAIN and "srun" not in cmd
    sbatch = render_sbatch(slurm_resources(res))
    assert "--gpus=8" in sbatch and "--ntasks-per-gpu" not in sbatch  # no per-GPU tasks: the trap is off


def test_slurm_job_for_an_8_gpu_rule_on_two_nodes_starts_one_launcher_per_node_with_8_processes(tmp_path):
    res = Resources(gpus=8, nodes=2, cpus_per_task=32, mem_mb=400_000, runtime=600, launcher="accelerate",
                    accelerate_config="config/accelerate/zero3.yaml")
    resources = slurm_resources(res)
    sbatch = render_sbatch(resources)
    # one task per node, 8 GPUs per node, and never --ntasks-per-gpu (which would make 8 tasks per node)
    assert "--nodes=2" in sbatch and "--ntasks=2" in sbatch and "--gres=gpu:8" in sbatch
    assert "--ntasks-per-gpu" not in sbatch and "--cpus-per-task=32" in sbatch
    # with `mpi` set, the jobstep plugin runs the rule's command as is, without its own `srun -n1 --nodes=1`
    assert "mpi" in resources

    command = launch_command(res, TRAIN)
    env = fake_cluster(tmp_path, ["gpu01", "gpu02"])
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    launchers = [json.loads(line) for line in (tmp_path / "launchers.jsonl").read_text().splitlines()]
    assert len(launchers) == 2  # exactly one launcher per node
    assert sorted(option(l["argv"], "--machine_rank") for l in launchers) == ["0", "1"]
    for launcher in launchers:
        argv = launcher["argv"]
        assert option(argv, "--machine_rank") == launcher["node"]
        assert option(argv, "--num_machines") == "2" and option(argv, "--num_processes") == "16"  # 8 per node
        assert option(argv, "--main_process_ip") == "gpu01" and option(argv, "--rdzv_backend") == "c10d"
        assert argv[argv.index("--no_python") + 1:] == TRAIN


def test_rlmt_launch_cli_dry_run_and_errors():
    base = [sys.executable, "-m", "rlmt.cli", "launch"]
    done = subprocess.run([*base, "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--", *TRAIN],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("srun --nodes=2 --ntasks-per-node=1") and "--num_processes 16" in line
    assert line.endswith(" ".join(TRAIN))
    missing = subprocess.run([*base, "--dry-run"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and "give the command to run" in missing.stderr
    bad = subprocess.run([*base, "--accelerate-config", "nope.yaml", "--", "rlmt"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "file not found: nope.yaml" in bad.stderr


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")])
def test_accelerate_configs_load_with_accelerates_own_loader(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / f"config/accelerate/{name}.yaml"))
    assert cfg.distributed_type.value == kind
    if kind == "DEEPSPEED":
        assert (ROOT / cfg.deepspeed_config["deepspeed_config_file"]).is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_pass_deepspeeds_own_parser(stage, tmp_path):
    """The 'auto' values are filled the way the HF Trainer fills them, then DeepSpeed parses the result."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_grad_norm=1.0, report_to="none", use_cpu=True)
    hf = HfTrainerDeepSpeedConfig(str(ROOT / f"config/deepspeed/zero{stage}.json"))
    hf.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=128, hidden_sizes=None))
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (2, 4, 8)
    assert ds.gradient_clipping == 1.0
