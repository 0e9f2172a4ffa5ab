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
  c10d rendezvous on the first node of the allocation.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any, Sequence

from rlmt.config import Resources

DEFAULT_PORT = 29500
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config" / "accelerate"


def processes_per_node(res: Resources) -> int:
    return max(res.gpus, 1)


def accelerate_args(res: Resources, *, num_machines: int, machine_rank: str | None = None,
                    main_process_ip: str | None = None, port: int = DEFAULT_PORT) -> list[str]:
    """``accelerate launch`` options for `res` (the config file supplies DDP vs DeepSpeed ZeRO)."""
    args = ["accelerate", "launch"]
    if res.accelerate_config:
        args += ["--config_file", res.accelerate_config]
    args += ["--num_machines", str(num_machines), "--num_processes", str(num_machines * processes_per_node(res))]
    if num_machines > 1:
        args += ["--machine_rank", machine_rank or "0", "--main_process_ip", main_process_ip or "localhost",
                 "--main_process_port", str(port), "--rdzv_backend", "c10d"]
    return args + ["--no_python"]


def launch_prefix(res: Resources, *, port: int = DEFAULT_PORT) -> str:
    """The shell text that goes in front of ``rlmt train ...`` in a rule (empty for plain python)."""
    if res.nodes < 1:
        raise ValueError(f"resources.nodes must be >= 1, got {res.nodes}")
    if res.nodes == 1 and res.gpus <= 1 and res.launcher == "python":
        return ""
    if res.nodes == 1:
        return shlex.join(accelerate_args(res, num_machines=1))
    # Several nodes: $SLURM_NODEID and the node list exist only inside srun's task, so the
    # accelerate command is expanded there, by bash -c; the training command follows as "$@".
    inner = shlex.join(accelerate_args(res, num_machines=res.nodes, machine_rank="RANK", main_process_ip="HEAD",
                                       port=port))
    inner = inner.replace(" RANK ", ' "$SLURM_NODEID" ').replace(" HEAD ", ' "$head" ')
    script = 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1); exec ' + inner + ' "$@"'
    srun = ["srun", f"--nodes={res.nodes}", "--ntasks-per-node=1", f"--cpus-per-task={res.cpus_per_task}",
            "--kill-on-bad-exit=1"]
    return shlex.join(srun) + " bash -c " + shlex.quote(script) + " rlmt-launch"


def launch_command(res: Resources, command: Sequence[str], *, port: int = DEFAULT_PORT) -> str:
    """The full shell command that runs `command` (e.g. ``rlmt train grpo ...``) under `res`."""
    prefix = launch_prefix(res, port=port)
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
