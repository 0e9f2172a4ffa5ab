# Shared setup: the validated config (as pydantic models) and the experiment plan.
import os
import re

from rlmt.config import ConfigError, parse_config
from rlmt.workflow import JUDGED_BENCHMARKS, RULE_BENCHMARKS, Plan

try:
    PLAN = Plan(parse_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None

CFG = PLAN.cfg
CONFIG = PLAN.write_config_snapshot()
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


def res(rule, key, algo=None):
    """A resource value of `rule` from the config's resources block (a callable for Snakemake)."""
    return lambda wildcards: PLAN.resources(rule, key, algo(wildcards) if callable(algo) else algo)


def slurm(rule, key, algo=None):
    """A Slurm-plugin resource (gpu, gres, tasks, tasks_per_gpu, mpi, nodes ...) from the config."""
    return lambda wildcards: PLAN.slurm_resource(rule, key, algo(wildcards) if callable(algo) else algo)


def cell_algo(wildcards):
    """The training algorithm of the cell a job belongs to."""
    return PLAN.cell_by_name[wildcards.cell].algo
