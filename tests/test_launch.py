"""Launching training: plain python, accelerate on one node, one launcher per node on Slurm.

The Slurm job is rendered with snakemake-executor-plugin-slurm's own submit-string code. The
commands rlmt.launch builds run through accelerate's real launcher: 2 CPU processes (gloo) on
one node, and one launcher per "node" started by stand-ins for ``srun`` and ``scontrol`` whose
two launchers meet at a real (static) rendezvous on this machine. What each process saw (world size,
ranks, the launcher's argv) is recorded by the processes themselves.
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
from ports import free_port

from rlmt.config import Resources
from rlmt.launch import accelerate_args, launch_command, launch_prefix, slurm_resources

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
    """srun runs its command once per node (SLURM_NODEID set), scontrol lists the nodes; the real
    ``accelerate`` of this environment is what they start."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
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
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}


PROBE = """
import json, os, sys
from pathlib import Path

import torch
from accelerate import Accelerator
from rlmt.train.job import close_process_group

acc = Accelerator()
gathered = acc.gather(torch.tensor([acc.process_index])).tolist()
with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:  # the accelerate launcher that started this process
    launcher = [a.decode() for a in f.read().split(b"\\0") if a]
record = {"rank": acc.process_index, "local_rank": acc.local_process_index, "world": acc.num_processes,
          "type": acc.distributed_type.value, "backend": acc.state.backend, "gathered": gathered,
          "node": os.environ.get("SLURM_NODEID"), "local_world": int(os.environ["LOCAL_WORLD_SIZE"]),
          "launcher": launcher, "args": sys.argv[2:]}
(Path(sys.argv[1]) / f"rank-{acc.process_index}.json").write_text(json.dumps(record))
close_process_group()  # as every rlmt train command ends: without it a rank can SIGABRT at exit
"""


def run_probe(tmp_path: Path, res: Resources, env: dict[str, str], *, port: int) -> list[dict]:
    """Run the probe under the command rlmt.launch builds for `res` (rendezvous on `port`, a free one: a fixed
    port collides with another run on the machine); one record per process, by rank."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = tmp_path / "seen"
    out.mkdir()
    command = launch_command(res, [sys.executable, str(probe), str(out), "--flag", "value"], port=port)
    env = {**env, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}  # the CPU (gloo) path, as in CI
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return sorted((json.loads(p.read_text()) for p in out.glob("rank-*.json")), key=lambda r: r["rank"])


def parsed_by_accelerate(argv: list[str]):
    """accelerate's own parser on an ``accelerate launch ...`` argv."""
    from accelerate.commands.launch import launch_command_parser

    assert argv[:2] == ["accelerate", "launch"], argv
    return launch_command_parser().parse_args(argv[2:])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_single_process_runs_the_command_itself():
    assert launch_prefix(Resources()) == ""
    assert launch_command(Resources(), TRAIN) == " ".join(TRAIN)


def test_one_node_with_eight_gpus_is_one_accelerate_launcher_with_eight_processes():
    res = Resources(gpus=8, launcher="accelerate", accelerate_config="config/accelerate/zero2.yaml")
    cmd = launch_command(res, TRAIN).split()
    args = parsed_by_accelerate(cmd)
    # absolute paths (resolved against the source tree): the job's working directory is the user's `-d`
    assert (args.num_processes, args.num_machines) == (8, 1)
    assert (args.config_file, args.deepspeed_config_file) == (str(ROOT / "config/accelerate/zero2.yaml"),
                                                              str(ROOT / "config/deepspeed/zero2.json"))
    assert args.no_python and [args.training_script, *args.training_script_args] == TRAIN and "srun" not in cmd
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

    # what each node's launcher is given, read by accelerate's own parser
    for rank in ("0", "1"):
        args = parsed_by_accelerate([*accelerate_args(res, num_machines=2, machine_rank=rank, main_process_ip="gpu01"),
                                     *TRAIN])
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 16, int(rank))  # 8 per node
        assert (args.main_process_ip, args.main_process_port, args.rdzv_backend) == ("gpu01", 29500, "static")
        assert args.config_file == str(ROOT / "config/accelerate/zero3.yaml") and args.no_python
        assert args.deepspeed_config_file == str(ROOT / "config/deepspeed/zero3.json")
        assert [args.training_script, *args.training_script_args] == TRAIN


@pytest.mark.slow
def test_one_node_launch_starts_two_real_gloo_processes(tmp_path):
    """The one-node command runs through accelerate's launcher: 2 processes that see each other."""
    res = Resources(gpus=2, launcher="accelerate", accelerate_config=str(ROOT / "config/accelerate/ddp.yaml"))
    seen = run_probe(tmp_path, res, {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                     port=free_port())
    assert [r["rank"] for r in seen] == [0, 1] and [r["local_rank"] for r in seen] == [0, 1]
    for r in seen:
        assert (r["world"], r["local_world"], r["type"], r["backend"]) == (2, 2, "MULTI_CPU", "gloo")
        assert r["gathered"] == [0, 1]  # a real collective over both processes
        assert r["args"] == ["--flag", "value"]
        assert r["launcher"][1:3] == [str(Path(sys.executable).parent / "accelerate"), "launch"]
        assert option(r["launcher"], "--num_processes") == "2" and option(r["launcher"], "--num_machines") == "1"
    assert seen[0]["launcher"] == seen[1]["launcher"]  # one launcher started both


@pytest.mark.slow
def test_slurm_two_node_command_starts_one_real_launcher_per_node(tmp_path):
    """srun (stand-in) starts the multi-node command once per node; each runs a real accelerate
    launcher with its node's machine rank and the head node from scontrol, and the two meet."""
    res = Resources(gpus=1, nodes=2, cpus_per_task=1, launcher="accelerate",
                    accelerate_config=str(ROOT / "config/accelerate/ddp.yaml"))
    port = free_port()
    seen = run_probe(tmp_path, res, fake_cluster(tmp_path, ["127.0.0.1", "127.0.0.2"]), port=port)
    assert [r["rank"] for r in seen] == [0, 1] and sorted(r["node"] for r in seen) == ["0", "1"]
    launchers = {r["node"]: r["launcher"] for r in seen}
    assert launchers["0"] != launchers["1"]  # two launchers, one per node
    for r in seen:
        assert (r["world"], r["local_world"], r["local_rank"], r["backend"]) == (2, 1, 0, "gloo")
        assert r["gathered"] == [0, 1] and r["args"] == ["--flag", "value"]
        argv = r["launcher"]
        assert option(argv, "--machine_rank") == r["node"]  # $SLURM_NODEID, expanded on its node
        assert option(argv, "--main_process_ip") == "127.0.0.1"  # the first node scontrol lists
        assert option(argv, "--main_process_port") == str(port) and option(argv, "--rdzv_backend") == "static"
        assert option(argv, "--num_machines") == "2" and option(argv, "--num_processes") == "2"


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


def test_relative_launcher_configs_resolve_against_the_given_base_and_accelerate_takes_the_deepspeed_file(tmp_path,
                                                                                                         monkeypatch):
    """A relative accelerate config, and the relative DeepSpeed file inside it, are read from `base` (the
    workflow's source tree), whatever the working directory; accelerate's own launch validation then uses the
    DeepSpeed file given on the command line over the config's relative one (which would not resolve here)."""
    from accelerate.commands.launch import _validate_launch_command

    (tmp_path / "site/ds").mkdir(parents=True)
    (tmp_path / "site/ds/z.json").write_text((ROOT / "config/deepspeed/zero3.json").read_text())
    (tmp_path / "site/acc.yaml").write_text((ROOT / "config/accelerate/zero3.yaml").read_text()
                                            .replace("config/deepspeed/zero3.json", "ds/z.json"))
    elsewhere = tmp_path / "workdir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    res = Resources(gpus=2, launcher="accelerate", accelerate_config="acc.yaml")
    argv = accelerate_args(res, num_machines=1, base=tmp_path / "site")
    assert option(argv, "--config_file") == str(tmp_path / "site/acc.yaml")
    assert option(argv, "--deepspeed_config_file") == str(tmp_path / "site/ds/z.json")
    args = parsed_by_accelerate([*argv, *TRAIN])
    _validate_launch_command(args)
    assert args.use_deepspeed and args.deepspeed_config_file == str(tmp_path / "site/ds/z.json")
    # an absolute path is kept as given; a config naming no DeepSpeed file adds no option
    ddp = accelerate_args(Resources(gpus=2, launcher="accelerate", accelerate_config=str(ROOT / "config/accelerate/ddp.yaml")),
                          num_machines=1, base=tmp_path)
    assert option(ddp, "--config_file") == str(ROOT / "config/accelerate/ddp.yaml") and "--deepspeed_config_file" not in ddp


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED")])
def test_accelerate_configs_load_with_accelerates_own_loader(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / f"config/accelerate/{name}.yaml"))
    assert cfg.distributed_type.value == kind
    if kind == "DEEPSPEED":
        assert (ROOT / cfg.deepspeed_config["deepspeed_config_file"]).is_file()


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_pass_deepspeeds_own_parser(stage, tmp_path, tiny_zoo):
    """The 'auto' values are filled the way the HF Trainer fills them for a tiny zoo policy, then
    DeepSpeed parses the result."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=4,
                             max_grad_norm=1.0, report_to="none", use_cpu=True)
    # loaded first: a live ZeRO-3 HfTrainerDeepSpeedConfig makes from_pretrained partition with zero.Init
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo["llama-instruct"], use_safetensors=True)
    hf = HfTrainerDeepSpeedConfig(str(ROOT / f"config/deepspeed/zero{stage}.json"))
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == stage
    assert (ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps, ds.train_batch_size) == (2, 4, 8)
    assert ds.gradient_clipping == 1.0
    if stage == 3:  # ZeRO-3's bucket sizes are derived from the model's hidden size
        hidden = model.config.hidden_size
        zero = hf.config["zero_optimization"]
        assert zero["reduce_bucket_size"] == hidden * hidden
        assert zero["stage3_param_persistence_threshold"] == 10 * hidden
        assert ds.zero_config.reduce_bucket_size == hidden * hidden
