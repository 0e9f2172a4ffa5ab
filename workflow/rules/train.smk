# Training: warm-start SFT, then one RL run (GRPO, PPO or DPO) per cell.

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
    threads: job_threads("sft")
    resources:
        **job_resources("sft"),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}python -m rlmt.cli train sft --config {params.config} --policy-name {wildcards.sft_policy} "
        "--model {input.model} --data {input.data} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(train_inputs),
        preflight=PREFLIGHT,
    output:
        directory("results/checkpoints/{cell}/final"),
    params:
        config=CONFIG,
        algo=cell_algo,
        settings=lambda w: PLAN.settings_digest(cell_algo(w), PLAN.cell_by_name[w.cell]),
        outdir=lambda w: PLAN.checkpoint_dir(w.cell),
        launch=lambda w: PLAN.launch_prefix("train", cell_algo(w)),
        reward=cell_reward_args,
    log:
        "results/logs/train/{cell}.log",
    threads: job_threads("train", cell_algo)
    resources:
        **job_resources("train", cell_algo),
    conda:
        "../../envs/train.yaml"
    shell:
        "{params.launch}python -m rlmt.cli train {params.algo} --config {params.config} --cell {wildcards.cell} "
        "--policy {input.policy} {params.reward} --train {input.train} --val {input.val} "
        "--out {params.outdir} > {log} 2>&1"
