# Shared setup: the validated config (as pydantic models) and the experiment plan.
import os
import re
import shlex

from rlmt.config import ConfigError, parse_config
from rlmt.workflow import JUDGED_BENCHMARKS, RULE_BENCHMARKS, Plan

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
