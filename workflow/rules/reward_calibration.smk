# The fit behind a length-debiased reward (reward_models.<name>.kind: length_debiased): the start policy answers
# calibration prompts (a mixture's train or tune split; refused if one is an evaluation prompt), the base reward
# scores the answers, and calibration.json holds the least-squares line of reward on answer tokens. A training job
# that uses the reward gets the file as an input (rlmt.rewards.reward_inputs names it).


wildcard_constraints:
    debiased_reward=_alternatives(calibrated_rewards(CFG)),


rule reward_calibration:
    input:
        unpack(calibration_files),
        base_inputs=calibration_base_files,
    output:
        "results/rewards/{debiased_reward}/calibration.json",
    params:
        config=CONFIG,
        # the spec (calibration set, policy, sampling, base) as a digest: a change refits
        settings=calibration_settings,
        evaluation=calibration_evaluation_args,
        base_inputs=calibration_base_args,
    log:
        "results/logs/reward_calibration/{debiased_reward}.log",
    # generation, then scoring: where generation runs
    threads: job_threads("reward_calibration")
    resources:
        **job_resources("reward_calibration"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "python -m rlmt.cli train reward-calibration --config {params.config} --name {wildcards.debiased_reward} "
        "--prompts {input.prompts} --policy {input.policy} --tokenizer {input.tokenizer} {params.evaluation} "
        "{params.base_inputs} --out {output} > {log} 2>&1"
