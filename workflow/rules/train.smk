# Training: warm-start SFT, then one RL run (GRPO, PPO or DPO) per cell.

PREFLIGHT = "results/.rlmt/preflight.ok"


localrules:
    preflight,


# Every training job waits for `rlmt preflight`: the config's cells checked in seconds (templates,
# launcher and sharding, reachable checkpoints, memory per GPU, resources) before any GPU hour.
rule preflight:
    input:
        config=CONFIG,
    output:
        PREFLIGHT,
    log:
        "results/logs/preflight.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m rlmt.cli preflight --config {input.config} --done {output} > {log} 2>&1"


rule sft:
    input:
        model=lambda w: PLAN.model_dir(PLAN.parse_policy(w.sft_policy)["base"]),
        data=lambda w: "results/data/sft/{sft}/{think}.jsonl".format(
            sft=PLAN.parse_policy(w.sft_policy)["sft_data"],
            think="think" if PLAN.parse_policy(w.sft_policy)["think"] else "nothink",
        ),
        preflight=PREFLIGHT,
    output:
        directory("results/models/{sft_policy}"),
    params:
        config=CONFIG,
        settings=lambda w: PLAN.settings_digest("sft", PLAN.parse_policy(w.sft_policy)),
        launch=lambda w: PLAN.launch_prefix("sft"),
    log:
        "results/logs/sft/{sft_policy}.log",
    threads: lambda w: PLAN.resources("sft", "cpus_per_task")
    resources:
        nodes=slurm("sft", "nodes"),
        mem_mb=slurm("sft", "mem_mb"),
        runtime=slurm("sft", "runtime"),
        cpus_per_task=slurm("sft", "cpus_per_task"),
        gpu=slurm("sft", "gpu"),
        gres=slurm("sft", "gres"),
        tasks=slurm("sft", "tasks"),
        tasks_per_gpu=slurm("sft", "tasks_per_gpu"),
        mpi=slurm("sft", "mpi"),
        slurm_partition=slurm("sft", "slurm_partition"),
        slurm_account=slurm("sft", "slurm_account"),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}rlmt train sft --config {params.config} --policy-name {wildcards.sft_policy} "
        "--model {input.model} --data {input.data} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(lambda w: PLAN.train_inputs(w.cell)),
        preflight=PREFLIGHT,
    output:
        directory("results/checkpoints/{cell}/final"),
    params:
        config=CONFIG,
        algo=cell_algo,
        settings=lambda w: PLAN.settings_digest(cell_algo(w), PLAN.cell_by_name[w.cell]),
        outdir=lambda w: PLAN.checkpoint_dir(w.cell),
        launch=lambda w: PLAN.launch_prefix("train", cell_algo(w)),
    log:
        "results/logs/train/{cell}.log",
    threads: lambda w: PLAN.resources("train", "cpus_per_task")
    resources:
        nodes=slurm("train", "nodes", cell_algo),
        mem_mb=slurm("train", "mem_mb", cell_algo),
        runtime=slurm("train", "runtime", cell_algo),
        cpus_per_task=slurm("train", "cpus_per_task", cell_algo),
        gpu=slurm("train", "gpu", cell_algo),
        gres=slurm("train", "gres", cell_algo),
        tasks=slurm("train", "tasks", cell_algo),
        tasks_per_gpu=slurm("train", "tasks_per_gpu", cell_algo),
        mpi=slurm("train", "mpi", cell_algo),
        slurm_partition=slurm("train", "slurm_partition", cell_algo),
        slurm_account=slurm("train", "slurm_account", cell_algo),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}rlmt train {params.algo} --config {params.config} --cell {wildcards.cell} "
        "--policy {input.policy} --reward-model {input.reward_model} --train {input.train} --val {input.val} "
        "--out {params.outdir} > {log} 2>&1"
