# Data: prompt mixtures, warm-start SFT sets, benchmark items.


rule curate:
    input:
        tokenizer=lambda w: (
            [PLAN.model_dir(CFG.mixtures[w.mixture].tokenizer_model)]
            if CFG.mixtures[w.mixture].tokenizer_model
            else []
        ),
    output:
        train="results/data/mixtures/{mixture}/train.parquet",
        val="results/data/mixtures/{mixture}/val.parquet",
        tune="results/data/mixtures/{mixture}/tune.parquet",
        quarantine="results/data/mixtures/{mixture}/quarantine.parquet",
        stats="results/data/mixtures/{mixture}/stats.json",
    params:
        config=CONFIG,
        tokenizer=lambda w, input: f"--tokenizer {input.tokenizer[0]}" if input.tokenizer else "",
        outdir=lambda w, output: os.path.dirname(output.train),
    log:
        "results/logs/curate/{mixture}.log",
    threads: job_threads("curate")
    resources:
        **job_resources("curate"),
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m rlmt.cli data curate --config {params.config} --mixture {wildcards.mixture} {params.tokenizer} "
        "--out {params.outdir} > {log} 2>&1"


rule sft_data:
    output:
        think="results/data/sft/{sft}/think.jsonl",
        nothink="results/data/sft/{sft}/nothink.jsonl",
    params:
        config=CONFIG,
    log:
        "results/logs/sft_data/{sft}.log",
    threads: job_threads("sft_data")
    resources:
        **job_resources("sft_data"),
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m rlmt.cli data sft --config {params.config} --name {wildcards.sft} "
        "--out-think {output.think} --out-nothink {output.nothink} > {log} 2>&1"


rule benchmark_items:
    input:
        lambda w: PLAN.items_inputs(w.bench),
    output:
        "results/data/benchmarks/{bench}/items.jsonl",
    params:
        config=CONFIG,
    log:
        "results/logs/benchmark_items/{bench}.log",
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli eval items --config {params.config} --bench {wildcards.bench} --out {output} > {log} 2>&1"
