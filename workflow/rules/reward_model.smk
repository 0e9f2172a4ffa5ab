# A reward model the pipeline trains itself (reward_models.<rm>.train): preference pairs (chosen = a strong
# reference answer, rejected = the policy's own), then a Bradley-Terry reward model on them. Its output is the
# same results/models/<rm> dir that a prepared reward model has, so the training and scoring rules use it as is.


wildcard_constraints:
    trained_rm=_alternatives(PLAN.trained_reward_models()),


rule rm_pairs:
    input:
        unpack(lambda w: PLAN.rm_pairs_inputs(w.trained_rm)),
        reference=lambda w: PLAN.rm_reference(w.trained_rm),
    output:
        "results/data/rm_pairs/{trained_rm}/pairs.jsonl",
    params:
        config=CONFIG,
        exclude=lambda w, input: " ".join(f"--exclude {shlex.quote(p)}" for p in input.exclude),
        limit=lambda w: (f"--limit {CFG.reward_models[w.trained_rm].train.limit}"
                         if CFG.reward_models[w.trained_rm].train.limit else ""),
        max_new_tokens=lambda w: CFG.reward_models[w.trained_rm].train.max_new_tokens,
        # length balance (optional): pairs whose answers' token ratio, or whose share with the shorter answer
        # chosen, is out of bounds are dropped and counted in pairs.stats.json
        balance=lambda w: " ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in (
                ("max_length_ratio", CFG.reward_models[w.trained_rm].train.max_length_ratio),
                ("min_shorter_chosen_share", CFG.reward_models[w.trained_rm].train.min_shorter_chosen_share))
            if value is not None),
    log:
        "results/logs/rm_pairs/{trained_rm}.log",
    threads: job_threads("rm_pairs")
    resources:
        **job_resources("rm_pairs"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli data rm-pairs --config {params.config} --reference {input.reference} --policy {input.policy} "
        "{params.exclude} {params.limit} --max-new-tokens {params.max_new_tokens} {params.balance} --out {output} > {log} 2>&1"


rule train_rm:
    input:
        backbone=lambda w: PLAN.model_dir(CFG.reward_models[w.trained_rm].train.backbone),
        pairs="results/data/rm_pairs/{trained_rm}/pairs.jsonl",
    output:
        directory("results/models/{trained_rm}"),
    params:
        config=CONFIG,
        settings=lambda w: CFG.reward_models[w.trained_rm].train,
        keep_layers=lambda w: (f"--keep-layers {CFG.reward_models[w.trained_rm].train.keep_layers}"
                               if CFG.reward_models[w.trained_rm].train.keep_layers else ""),
    log:
        "results/logs/train_rm/{trained_rm}.log",
    threads: job_threads("train_rm")
    resources:
        **job_resources("train_rm"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m rlmt.cli train rm --config {params.config} --backbone {input.backbone} --pairs {input.pairs} "
        "--learning-rate {params.settings.learning_rate} --epochs {params.settings.epochs} "
        "--batch-size {params.settings.batch_size} --max-length {params.settings.max_length} {params.keep_layers} "
        "--seed {params.settings.seed} --out {output} > {log} 2>&1"
