# Shared setup: the validated config (as pydantic models) and the experiment plan.
import os
import re
import shlex

from rlmt.config import ConfigError, parse_config
from rlmt.workflow import JUDGED_BENCHMARKS, RULE_BENCHMARKS, Plan
from rlmt.data.rubrics import rubric_mixtures
from rlmt.rewards import kind_of
from rlmt.rewards.calibration import calibrated_rewards, calibration_inputs

try:
    # relative paths in the config (accelerate configs) resolve against this workflow's source tree, not `-d`
    PLAN = Plan(parse_config(config), base_dir=workflow.basedir)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

CFG = PLAN.cfg

# Tiny rules (seconds of file work) run in the Snakemake process, never as cluster jobs.
localrules:
    all,
    zero_model,
    benchmark_items,
    score,
    model_scores,
    report,


# The API keys the plan's teachers, judges and HTTP generation need: Snakemake stops at once when one
# is missing (instead of a judge job failing hours in) and passes them to the jobs.
envvars:
    *PLAN.api_key_envs(),


# Every rule runs the package of this workflow's own source tree (`python -m rlmt.cli`), whether its
# Python is the user's venv or a conda env made from envs/*.yaml (which hold the dependencies only).
shell.prefix("set -euo pipefail; export PYTHONPATH=" + shlex.quote(workflow.basedir) + '${{PYTHONPATH:+:$PYTHONPATH}}; ')
CONFIG = PLAN.write_config_snapshot()

# `rlmt preflight` (rlmt/preflight/) gates every SFT and training job: it runs here, in the Snakemake
# process, before the DAG is built (also in a dry run; never again inside cluster jobs), and a blocker stops
# Snakemake before any job starts. The marker it writes is an input of those jobs; see rlmt.preflight.gate for
# why it is not a rule.
PREFLIGHT = "results/.rlmt/preflight.ok"
if workflow.is_main_process:
    from rlmt.preflight import PreflightBlocked, gate

    try:
        gate(CONFIG, PREFLIGHT, root=workflow.basedir, log="results/logs/preflight.log")
    except PreflightBlocked as err:
        raise WorkflowError(str(err)) from None
CELL_NAMES = PLAN.cell_names
EVAL_MODELS = PLAN.eval_models


def _alternatives(names):
    return "|".join(sorted((re.escape(n) for n in names), key=len, reverse=True)) or "$^"


wildcard_constraints:
    model=_alternatives(PLAN.prepared_models()),
    policy=_alternatives(PLAN.zero_policies() + PLAN.sft_policies()),
    zero=_alternatives(PLAN.zero_policies()),
    sft_policy=_alternatives(PLAN.sft_policies()),
    cell=_alternatives(CELL_NAMES),
    evalmodel=_alternatives(EVAL_MODELS),
    bench=_alternatives(PLAN.benchmarks),
    rulebench=_alternatives([b for b in PLAN.benchmarks if b in RULE_BENCHMARKS]),
    judgedbench=_alternatives([b for b in PLAN.benchmarks if b in JUDGED_BENCHMARKS]),
    mixture=_alternatives(CFG.mixtures),
    sft=_alternatives(CFG.sft_data),
    think="think|nothink",


def job_resources(rule, algo=None):
    """Every resource of `rule` from the config's `resources` block, as callables for Snakemake.

    `algo` (a function of the wildcards) picks `resources.<rule>_<algo>`. A key none of the rule's
    jobs has is not declared; one that only some jobs have is None for the others, which drops it.
    """

    def value(key):
        return lambda wildcards: PLAN.job_resources(rule, algo(wildcards) if algo else None).get(key)

    return {key: value(key) for key in PLAN.resource_keys(rule)}


def job_threads(rule, algo=None):
    return lambda wildcards: PLAN.job_threads(rule, algo(wildcards) if algo else None)


def cell_algo(wildcards):
    """The training algorithm of the cell a job belongs to."""
    return PLAN.cell_by_name[wildcards.cell].algo


def train_inputs(wildcards):
    """A training job's inputs: policy, reward (the files of the cell's reward: rlmt.rewards.reward_inputs), train, val."""
    return PLAN.train_inputs(wildcards.cell)


def cell_reward_args(wildcards):
    """`--reward-input KEY=PATH ...`: the cell's reward (`reward_models.<rm>`) and its files, for `rlmt train`."""
    return PLAN.reward_args(PLAN.cell_by_name[wildcards.cell].rm)


def winrate_reward_files(wildcards):
    """The files of the reward that judges reward-winrate (its `reward_model` option, else the first entry)."""
    return PLAN.winrate_reward_files()


def winrate_reward_args(wildcards):
    """`--reward NAME --reward-input KEY=PATH ...` for the reward that judges reward-winrate."""
    name = PLAN.winrate_reward_model()
    return f"--reward {shlex.quote(name)} {PLAN.reward_args(name)}"


# ----------------------------------------------------------------------------- rubrics (rubrics.smk)

RUBRIC_REWARDS = [
    n for n, rm in CFG.reward_models.items() if kind_of(rm) == "rubric" and rm.rubrics.has_file
]


def rubric_prompt_files(wildcards):
    """The train and val prompts of the mixtures the reward's cells (and the reward win rate) use."""
    return [
        f"results/data/mixtures/{m}/{split}.parquet"
        for m in rubric_mixtures(CFG, wildcards.rubric)
        for split in ("train", "val")
    ]


# ----------------------------------------------------------------------------- reward calibration (reward_calibration.smk)


def calibration_files(wildcards):
    """The calibration prompts, the policy that answers them, the tokenizer that counts, the evaluation items."""
    inputs = calibration_inputs(PLAN, wildcards.debiased_reward)
    return {k: v for k, v in inputs.items() if k in ("prompts", "policy", "tokenizer", "evaluation")}


def calibration_base_files(wildcards):
    """The files of the reward being debiased."""
    return list(calibration_inputs(PLAN, wildcards.debiased_reward)["base_inputs"].values())


def calibration_settings(wildcards):
    """The debiased reward's entry (calibration set, policy, sampling, base) as JSON: a change refits."""
    return CFG.reward_models[wildcards.debiased_reward].model_dump_json()


def calibration_evaluation_args(wildcards, input):
    """`--evaluation PATH` per evaluation file the calibration prompts must not overlap."""
    return " ".join(f"--evaluation {shlex.quote(p)}" for p in input.evaluation)


def calibration_base_args(wildcards):
    """`--reward-input KEY=PATH` per file of the reward being debiased."""
    base = calibration_inputs(PLAN, wildcards.debiased_reward)["base_inputs"]
    return " ".join(f"--reward-input {shlex.quote(f'{key}={path}')}" for key, path in base.items())
