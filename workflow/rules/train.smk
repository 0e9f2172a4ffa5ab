# Training: warm-start SFT, then one RL run (GRPO, PPO or DPO) per cell.


rule sft:
    input:
        model=lambda w: PLAN.model_dir(PLAN.parse_policy(w.sft_policy)["base"]),
        data=lambda w: "results/data/sft/{sft}/{think}.jsonl".format(
            sft=PLAN.parse_policy(w.sft_policy)["sft_data"],
            think="think" if PLAN.parse_policy(w.sft_policy)["think"] else "nothink",
        ),
    output:
        directory("results/models/{sft_policy}"),
    params:
        settings=lambda w: PLAN.settings_digest("sft", PLAN.parse_policy(w.sft_policy)),
        launch=lambda w: PLAN.launch_prefix("sft"),
    log:
        "results/logs/sft/{sft_policy}.log",
    threads: workflow.cores
    resources:
        gpus=res("sft", "gpus"),
        nodes=res("sft", "nodes"),
        mem_mb=res("sft", "mem_mb"),
        runtime=res("sft", "runtime"),
        cpus_per_task=res("sft", "cpus_per_task"),
        slurm_partition=res("sft", "slurm_partition"),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}rlmt train sft --config {CONFIG} --policy-name {wildcards.sft_policy} "
        "--model {input.model} --data {input.data} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(lambda w: PLAN.train_inputs(w.cell)),
    output:
        directory("results/checkpoints/{cell}/final"),
    params:
        algo=lambda w: PLAN.cell_by_name[w.cell].algo,
        settings=lambda w: PLAN.settings_digest(PLAN.cell_by_name[w.cell].algo, PLAN.cell_by_name[w.cell]),
        outdir=lambda w: PLAN.checkpoint_dir(w.cell),
        launch=lambda w: PLAN.launch_prefix("train", PLAN.cell_by_name[w.cell].algo),
    log:
        "results/logs/train/{cell}.log",
    threads: workflow.cores
    resources:
        gpus=res("train", "gpus", lambda w: PLAN.cell_by_name[w.cell].algo),
        nodes=res("train", "nodes", lambda w: PLAN.cell_by_name[w.cell].algo),
        mem_mb=res("train", "mem_mb", lambda w: PLAN.cell_by_name[w.cell].algo),
        runtime=res("train", "runtime", lambda w: PLAN.cell_by_name[w.cell].algo),
        cpus_per_task=res("train", "cpus_per_task", lambda w: PLAN.cell_by_name[w.cell].algo),
        slurm_partition=res("train", "slurm_partition", lambda w: PLAN.cell_by_name[w.cell].algo),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}rlmt train {params.algo} --config {CONFIG} --cell {wildcards.cell} "
        "--policy {input.policy} --reward-model {input.reward_model} --train {input.train} --val {input.val} "
        "--out {params.outdir} > {log} 2>&1"
