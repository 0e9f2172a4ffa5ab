"""How a training job is started: plain python, ``accelerate launch``, or one launcher per node via ``srun``.

Training code never knows how it was launched: ``rlmt train ...`` runs the same under any of
these, because every trainer goes through ``accelerate`` (TRL's trainers, and our PPO loop).

===============================  ==========================================================
resources                         command
===============================  ==========================================================
1 node, <= 1 GPU, python          ``rlmt train ...``
1 node, G GPUs (or accelerate)    ``accelerate launch --num_processes G ... --no_python rlmt train ...``
N nodes x G GPUs                  ``srun --nodes N --ntasks-per-node 1 bash -c 'accelerate launch
                                  --num_machines N --num_processes N*G --machine_rank $SLURM_NODEID
                                  --main_process_ip <first node> ...' rlmt-launch rlmt train ...``
===============================  ==========================================================

``Resources.gpus`` counts GPUs *per node*.

The Slurm trap (snakemake-executor-plugin-slurm 2.x, read from its source): for a job with a
``gpu`` resource the plugin turns ``tasks`` (or ``tasks_per_gpu``) into ``sbatch --ntasks-per-gpu``,
so an 8-GPU job holds 8 tasks, and any plain ``srun`` inside it then runs a single-process script
8 times, each copy believing it is alone. Without ``mpi`` the jobstep plugin wraps the rule in
``srun -n1 --nodes=1``, which can never reach a second node. Hence :func:`slurm_resources`:

- one node: ``gpu=G`` and ``tasks_per_gpu=0`` (no per-GPU tasks); the jobstep's single
  ``srun -n1`` task runs one ``accelerate launch`` that starts G processes;
- several nodes: ``gres=gpu:G`` per node, ``mpi`` set (the jobstep runs the rule's shell
  command directly, without its own ``srun``), ``tasks=N`` so that ``sbatch --nodes=N
  --ntasks=N`` holds one task per node; the rule's own ``srun --ntasks-per-node=1`` (from
  :func:`launch_prefix`) then starts exactly one launcher per node, and the launchers meet at a
  static rendezvous on the first node of the allocation (its NodeAddr, which need not be its name).

Which step owns the CPUs (measured on a real Slurm 22.05, tests/test_slurm_e2e.py): without
``mpi`` the jobstep's ``srun -n1`` step holds every CPU of the job, so an ``srun`` inside the
rule waits for CPUs that are never freed and the job hangs until its time limit. ``srun --overlap``
would get past that but share the step's CPUs and memory; with ``mpi`` the rule's own ``srun`` is
the job's only step and owns its CPUs, which is the design here. ``mpi`` is therefore set exactly
when the launcher starts with ``srun`` (several nodes) and left out otherwise (the jobstep tests
the key's presence, not its value). One node never needs ``srun``: its ``accelerate launch``
runs inside the jobstep's step and starts its processes there.

Without GPUs (CPU nodes, and the tests) the processes are torchrun's (``--multi_gpu``, which
only selects that launcher) on the gloo backend (``ACCELERATE_USE_CPU=true``).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

import yaml

from rlmt.config import Resources

DEFAULT_PORT = 29500
# The source tree of this package (the workflow's base directory: Snakefile, config/): a relative
# `accelerate_config`, and a relative DeepSpeed file such a config names, resolve against it, never
# against the working directory (`snakemake -d OTHER` runs every job in OTHER).
SOURCE_ROOT = Path(__file__).resolve().parents[1]


def accelerate_config_files(config: str, base: Path = SOURCE_ROOT) -> tuple[Path, Path | None]:
    """The accelerate config file `config` and the DeepSpeed config file it names (None if it names none),
    each resolved against `base` when relative. A missing or unreadable config names no DeepSpeed file."""
    config_file = Path(config) if Path(config).is_absolute() else Path(base) / config
    try:
        acc = yaml.safe_load(config_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return config_file, None
    ds = (acc.get("deepspeed_config") or {}).get("deepspeed_config_file") if isinstance(acc, dict) else None
    if not ds:
        return config_file, None
    return config_file, Path(ds) if Path(ds).is_absolute() else Path(base) / ds


def processes_per_node(res: Resources) -> int:
    return max(res.gpus, 1)


def accelerate_args(res: Resources, *, num_machines: int, machine_rank: str | None = None,
                    main_process_ip: str | None = None, port: int = DEFAULT_PORT,
                    base: Path = SOURCE_ROOT) -> list[str]:
    """``accelerate launch`` options for `res` (the config file supplies DDP vs DeepSpeed ZeRO).

    The config file, and the DeepSpeed file it names, are passed as absolute paths (relative ones resolved
    against `base`): accelerate would read a relative one from the job's working directory."""
    args = ["accelerate", "launch"]
    processes = num_machines * processes_per_node(res)
    if res.accelerate_config:
        config_file, ds_file = accelerate_config_files(res.accelerate_config, base)
        args += ["--config_file", str(config_file)]
        if ds_file is not None:
            args += ["--deepspeed_config_file", str(ds_file)]  # overrides the config's relative path
    elif processes > 1:
        args += ["--multi_gpu"]  # torchrun's launcher; without it accelerate starts one lone process per machine
    args += ["--num_machines", str(num_machines), "--num_processes", str(processes)]
    if num_machines == 1 and port != DEFAULT_PORT:  # one node: only its port can clash (jobs sharing a node)
        args += ["--main_process_port", str(port)]
    if num_machines > 1:
        # static rendezvous: node 0 (the first of the allocation) hosts the store, the others join it.
        # (c10d lets whichever agent comes first host it, which on one host collides with node 0's own
        # port check; a fixed-size job gains nothing from c10d's elasticity.)
        args += ["--machine_rank", machine_rank or "0", "--main_process_ip", main_process_ip or "localhost",
                 "--main_process_port", str(port), "--rdzv_backend", "static"]
    return args + ["--no_python"]


def launch_prefix(res: Resources, *, port: int = DEFAULT_PORT, base: Path = SOURCE_ROOT) -> str:
    """The shell text that goes in front of ``rlmt train ...`` in a rule (empty for plain python)."""
    if res.nodes < 1:
        raise ValueError(f"resources.nodes must be >= 1, got {res.nodes}")
    if res.nodes == 1 and res.gpus <= 1 and res.launcher == "python":
        return ""
    cpu_env = "ACCELERATE_USE_CPU=true " if res.gpus == 0 else ""
    if res.nodes == 1:
        return cpu_env + shlex.join(accelerate_args(res, num_machines=1, port=port, base=base))
    # Several nodes: $SLURM_NODEID and the node list exist only inside srun's task, so the
    # accelerate command is expanded there, by bash -c; the training command follows as "$@".
    # The rendezvous is the first node's NodeAddr (node names need not resolve), on a port
    # offset by the job id, so two jobs sharing a node do not collide.
    inner = shlex.join(accelerate_args(res, num_machines=res.nodes, machine_rank="RANK", main_process_ip="HEAD",
                                       port=port, base=base))
    inner = (inner.replace(" RANK ", ' "$SLURM_NODEID" ').replace(" HEAD ", ' "$addr" ')
             .replace(f" {port} ", ' "$port" '))
    script = (
        'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); '
        'addr=$(scontrol show node "$head" 2>/dev/null | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p" | head -n 1); '
        'addr=${addr:-$head}; '
        f'port=$(( {port} + ${{SLURM_JOB_ID:-0}} % 1000 )); '
        f'echo "rlmt-launch: node ${{SLURMD_NODENAME:-$(hostname)}} machine_rank $SLURM_NODEID of {res.nodes}, '
        'rendezvous $addr:$port" >&2; '
        + ("export ACCELERATE_USE_CPU=true; " if cpu_env else "")
        + "exec " + inner + ' "$@"'
    )
    srun = ["srun", f"--nodes={res.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={res.cpus_per_task}",
            "--kill-on-bad-exit=1"]
    return shlex.join(srun) + " bash -c " + shlex.quote(script) + " rlmt-launch"


def launch_command(res: Resources, command: Sequence[str], *, port: int = DEFAULT_PORT,
                   base: Path = SOURCE_ROOT) -> str:
    """The full shell command that runs `command` (e.g. ``rlmt train grpo ...``) under `res`."""
    prefix = launch_prefix(res, port=port, base=base)
    return (prefix + " " if prefix else "") + shlex.join(command)


def slurm_resources(res: Resources) -> dict[str, Any]:
    """Snakemake ``resources`` for snakemake-executor-plugin-slurm that start one launcher per node.

    See the module docstring for why each key is there.
    """
    out: dict[str, Any] = {"nodes": res.nodes, "mem_mb": res.mem_mb, "runtime": res.runtime,
                           "cpus_per_task": res.cpus_per_task}
    if res.slurm_partition:
        out["slurm_partition"] = res.slurm_partition
    if res.slurm_account:
        out["slurm_account"] = res.slurm_account
    if res.nodes == 1:
        if res.gpus:
            out.update(gpu=res.gpus, tasks_per_gpu=0)
        return out
    out.update(gres=f"gpu:{res.gpus}" if res.gpus else None, mpi="srun", tasks=res.nodes, tasks_per_gpu=0)
    return {k: v for k, v in out.items() if v is not None}
