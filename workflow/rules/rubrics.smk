# Rubrics: one rubric per prompt for each `kind: rubric` reward whose source makes a file (a teacher endpoint,
# or a published set's column): results/data/rubrics/<reward>/rubrics.jsonl, a training job's input (the key
# rlmt.rewards.rubric.input_key names). Cached and resumable: a rerun asks the teacher only what is missing.
rule rubrics:
    input:
        prompts=rubric_prompt_files,
    output:
        "results/data/rubrics/{rubric}/rubrics.jsonl",
    wildcard_constraints:
        rubric=_alternatives(RUBRIC_REWARDS),
    params:
        config=CONFIG,
        prompts=lambda w, input: " ".join(f"--prompts {p}" for p in input.prompts),
    log:
        "results/logs/rubrics/{rubric}.log",
    # a CPU job that waits on an endpoint: resources.rubrics, else the warm-start teacher's (resources.sft_data)
    threads: job_threads("rubrics")
    resources:
        **job_resources("rubrics"),
    conda:
        "../../envs/data.yaml"
    shell:
        "python -m rlmt.cli data rubrics --config {params.config} --reward {wildcards.rubric} {params.prompts} "
        "--out {output} > {log} 2>&1"
