# Evaluation: generate once per (model, benchmark), then score (rules) or judge (LLM judges).
# Generation and judging are separate jobs, so generation can run on an offline GPU node and
# judging later on a node with network access.


rule generate:
    input:
        model=lambda w: EVAL_MODELS[w.evalmodel].directory,
        prompts=lambda w: PLAN.items_file(w.bench),
    output:
        "results/eval/{evalmodel}/{bench}/generations.jsonl",
    params:
        config=CONFIG,
        cell=lambda w: f"--cell {EVAL_MODELS[w.evalmodel].cell}" if EVAL_MODELS[w.evalmodel].cell else "",
        max_new_tokens=lambda w: PLAN.max_new_tokens(w.evalmodel, w.bench),
        settings=lambda w: PLAN.generation_digest(w.evalmodel, w.bench),
    log:
        "results/logs/generate/{evalmodel}/{bench}.log",
    threads: job_threads("generate")
    resources:
        **job_resources("generate"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval generate --config {params.config} --model {input.model} --model-name {wildcards.evalmodel} {params.cell} "
        "--bench {wildcards.bench} --prompts {input.prompts} --max-new-tokens {params.max_new_tokens} "
        "--out {output} > {log} 2>&1"


rule score:
    input:
        generations="results/eval/{evalmodel}/{rulebench}/generations.jsonl",
        prompts=lambda w: PLAN.items_file(w.rulebench),
    output:
        "results/eval/{evalmodel}/{rulebench}/scores.json",
    params:
        config=CONFIG,
        cell=lambda w: f"--cell {EVAL_MODELS[w.evalmodel].cell}" if EVAL_MODELS[w.evalmodel].cell else "",
    log:
        "results/logs/score/{evalmodel}/{rulebench}.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval score --config {params.config} --bench {wildcards.rulebench} --model-name {wildcards.evalmodel} "
        "{params.cell} --items {input.prompts} --generations {input.generations} --out {output} > {log} 2>&1"


rule score_winrate:
    input:
        generations="results/eval/{evalmodel}/reward-winrate/generations.jsonl",
        reference=lambda w: PLAN.generations_file(PLAN.winrate_reference(w.evalmodel), "reward-winrate"),
        reward=winrate_reward_files,
        prompts=lambda w: PLAN.items_file("reward-winrate"),
    output:
        "results/eval/{evalmodel}/reward-winrate/scores.json",
    params:
        config=CONFIG,
        cell=lambda w: f"--cell {EVAL_MODELS[w.evalmodel].cell}" if EVAL_MODELS[w.evalmodel].cell else "",
        reward=winrate_reward_args,
    log:
        "results/logs/score/{evalmodel}/reward-winrate.log",
    threads: job_threads("score_winrate")
    resources:
        **job_resources("score_winrate"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval score --config {params.config} --bench reward-winrate --model-name {wildcards.evalmodel} {params.cell} "
        "--items {input.prompts} --generations {input.generations} --reference {input.reference} "
        "{params.reward} --out {output} > {log} 2>&1"


rule judge:
    input:
        generations="results/eval/{evalmodel}/{judgedbench}/generations.jsonl",
        prompts=lambda w: PLAN.items_file(w.judgedbench),
    output:
        judgments="results/eval/{evalmodel}/{judgedbench}/judgments.jsonl",
        scores="results/eval/{evalmodel}/{judgedbench}/scores.json",
    params:
        config=CONFIG,
        cell=lambda w: f"--cell {EVAL_MODELS[w.evalmodel].cell}" if EVAL_MODELS[w.evalmodel].cell else "",
        settings=lambda w: PLAN.judge_digest(w.judgedbench),
    log:
        "results/logs/judge/{evalmodel}/{judgedbench}.log",
    threads: job_threads("judge")
    resources:
        **job_resources("judge"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval judge --config {params.config} --bench {wildcards.judgedbench} --model-name {wildcards.evalmodel} "
        "{params.cell} --items {input.prompts} --generations {input.generations} "
        "--out-judgments {output.judgments} --out {output.scores} > {log} 2>&1"


rule model_scores:
    input:
        lambda w: [PLAN.scores_file(w.evalmodel, b) for b in PLAN.benchmarks_for(w.evalmodel)],
    output:
        "results/eval/{evalmodel}/scores.json",
    params:
        config=CONFIG,
        cell=lambda w: f"--cell {EVAL_MODELS[w.evalmodel].cell}" if EVAL_MODELS[w.evalmodel].cell else "",
        checkpoint=lambda w: f"--checkpoint {EVAL_MODELS[w.evalmodel].directory}",
    log:
        "results/logs/model_scores/{evalmodel}.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval collect --config {params.config} --model-name {wildcards.evalmodel} {params.cell} {params.checkpoint} "
        "--out {output} {input} > {log} 2>&1"
