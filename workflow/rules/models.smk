# Models: prepare configured models, convert base models to the zero template.


rule prepare_model:
    input:
        chat_template=lambda w: (
            [PLAN.model_dir(PLAN.chat_template_source(w.model))]
            if PLAN.chat_template_source(w.model)
            else []
        ),
    output:
        directory("results/models/{model}"),
    params:
        config=CONFIG,
        template=lambda w, input: (
            f"--chat-template-from {input.chat_template[0]}" if input.chat_template else ""
        ),
    log:
        "results/logs/prepare_model/{model}.log",
    threads: job_threads("prepare_model")
    resources:
        **job_resources("prepare_model"),
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m rlmt.cli models prepare --config {params.config} --model {wildcards.model} --out {output} {params.template} > {log} 2>&1"


rule zero_model:
    input:
        base=lambda w: PLAN.model_dir(PLAN.parse_policy(w.zero)["base"]),
    output:
        directory("results/models/{zero}"),
    params:
        mode=lambda w: "--think" if PLAN.parse_policy(w.zero)["think"] else "--nothink",
    log:
        "results/logs/zero_model/{zero}.log",
    conda:
        "../../envs/train.yaml"
    shell:
        "python -m rlmt.cli models zero --base {input.base} --out {output} {params.mode} > {log} 2>&1"
