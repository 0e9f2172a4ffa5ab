# rlmt: the RLMT experiment DAG. The workflow profile profiles/default (cores, ...) applies to every run.
#   snakemake all                                                      # embedded default (tiny, CPU)
#   snakemake results/eval/<cell>/scores.json                          # one ablation cell
#   snakemake --profile profiles/slurm --configfile=config/paper.yaml  # the paper's grid on a cluster
# (--configfile takes several files: give it with "=", or a target after it is read as a config.)
from snakemake.utils import min_version, validate

min_version("9.0")

# A Snakemake killed outright (kill -9) leaves its directory locks behind, and the same command
# would stop at them; they are removed when no Snakemake of this workflow is alive (rlmt/stale_locks.py).
if workflow.is_main_process:
    from rlmt.stale_locks import release_stale_locks

    for stale in release_stale_locks():
        logger.warning(f"removed {stale}: the Snakemake that locked this directory is gone")


# The embedded default unless a config is given (--configfile REPLACES it rather than being
# merged into it: a tiny-model entry must never leak into the paper's grid).
if not config:

    configfile: "config/config.yaml"


# Defaults are filled by the pydantic models (rlmt/config.py) the schema is generated from.
validate(config, "config/schema.yaml", set_default=False)

include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/reward_model.smk"
include: "workflow/rules/reward_calibration.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/rubrics.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Snakemake only rebuilds a missing intermediate file when a job that needs it must run, so the
# trained checkpoints are targets too: deleting one cell's final/ re-runs exactly that cell.
rule all:
    input:
        cell_scores=expand("results/eval/{cell}/scores.json", cell=CELL_NAMES),
        checkpoints=expand("results/checkpoints/{cell}/final", cell=CELL_NAMES),
        report="results/report/report.md",
    default_target: True
