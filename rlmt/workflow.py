"""The experiment plan behind the Snakemake DAG: paths, names and per-job settings.

The ``workflow/rules/*.smk`` files stay declarative; every decision about *which* files a cell
needs lives here, where it is importable and unit-tested. Nothing here imports torch, so
``snakemake -n`` over the paper's whole grid stays fast.

Paths (ARCHITECTURE.md, "File formats between stages"):

================================================  ==========================================
results/models/<model>/                           prepared base, instruct and reward models
results/models/<base>__zero__<think|nothink>/     zero-template policies
results/models/<base>__sft__<think>__<sft>/       warm-start (SFT) policies
results/data/mixtures/<mixture>/                  curated prompts (train/val/quarantine/stats)
results/data/sft/<sft>/<think|nothink>.jsonl      warm-start SFT sets
results/data/benchmarks/<bench>/items.jsonl       benchmark prompts (model independent)
results/checkpoints/<cell>/final/                 the trained policy the cell evaluates
results/eval/<model>/<bench>/                     generations.jsonl, judgments.jsonl, scores.json
results/eval/<model>/scores.json                  all benchmarks of one model (a cell's target)
results/report/                                   tables, figures, report.md/html
================================================  ==========================================
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from rlmt.config import Cell, RLMTConfig, Resources, parse_config

JUDGED_BENCHMARKS = {"alpacaeval2", "wildbench", "arenahard-v2", "creative-writing-v3"}
RULE_BENCHMARKS = {"demo-if", "ifeval", "ifbench", "mmlu-redux", "math-500", "zebralogic", "popqa"}
MODEL_FREE_ITEMS = RULE_BENCHMARKS | JUDGED_BENCHMARKS
CONFIG_SNAPSHOT = "results/.rlmt/config.yaml"


@dataclass(frozen=True)
class EvalModel:
    """A model that gets evaluated: a cell's trained policy, an initial policy, or a reference."""

    name: str
    directory: str
    cell: str | None  # the cell whose MLflow parent run the evaluation nests under
    think: bool


class Plan:
    def __init__(self, cfg: RLMTConfig | dict[str, Any], *, root: str = "results"):
        self.cfg = cfg if isinstance(cfg, RLMTConfig) else parse_config(cfg)
        self.root = root

    # ------------------------------------------------------------------ config snapshot

    def write_config_snapshot(self, path: str | Path = CONFIG_SNAPSHOT) -> str:
        """Write the validated, effective config where every job reads it (rewritten only on change)."""
        path = Path(path)
        text = yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False)
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return str(path)

    # ------------------------------------------------------------------ cells and models

    @cached_property
    def cells(self) -> list[Cell]:
        return self.cfg.cells()

    @cached_property
    def cell_by_name(self) -> dict[str, Cell]:
        return {c.name: c for c in self.cells}

    @property
    def cell_names(self) -> list[str]:
        return list(self.cell_by_name)

    def model_dir(self, name: str) -> str:
        return f"{self.root}/models/{name}"

    def policy_dir(self, cell: Cell) -> str:
        return self.model_dir(cell.policy_name)

    def checkpoint_dir(self, cell_name: str) -> str:
        return f"{self.root}/checkpoints/{cell_name}"

    def final_dir(self, cell_name: str) -> str:
        return f"{self.checkpoint_dir(cell_name)}/final"

    def prepared_models(self) -> list[str]:
        return sorted({*self.cfg.models, *self.cfg.reward_models})

    def chat_template_source(self, model: str) -> str | None:
        spec = self.cfg.models.get(model)
        return spec.chat_template_from if spec else None

    def zero_policies(self) -> list[str]:
        return sorted({c.policy_name for c in self.cells if c.start == "zero"})

    def sft_policies(self) -> list[str]:
        return sorted({c.policy_name for c in self.cells if c.start == "warm-start"})

    def parse_policy(self, name: str) -> dict[str, Any]:
        """'llama-base__sft__think__demo-sft' -> {base, start, think, sft_data}."""
        parts = name.split("__")
        if len(parts) == 3 and parts[1] == "zero":
            return {"base": parts[0], "start": "zero", "think": parts[2] == "think"}
        if len(parts) == 4 and parts[1] == "sft":
            return {"base": parts[0], "start": "warm-start", "think": parts[2] == "think", "sft_data": parts[3]}
        if len(parts) == 1 and name in self.cfg.models:  # grid start 'none': the prepared model as it is
            return {"base": name, "start": "none", "think": self.cfg.models[name].longcot is not None}
        raise ValueError(f"not a policy name: {name!r}")

    # ------------------------------------------------------------------ evaluation

    @cached_property
    def benchmarks(self) -> list[str]:
        return [b for b, spec in self.cfg.evaluation.benchmarks.items() if spec.enabled]

    @cached_property
    def eval_models(self) -> dict[str, EvalModel]:
        models: dict[str, EvalModel] = {}
        for cell in self.cells:
            models[cell.name] = EvalModel(cell.name, self.final_dir(cell.name), cell.name, cell.think)
        if self.cfg.evaluation.evaluate_initial:
            for cell in self.cells:
                models.setdefault(cell.policy_name, EvalModel(cell.policy_name, self.policy_dir(cell), None, cell.think))
        ref = self.cfg.evaluation.reference_model
        if ref and "reward-winrate" in self.benchmarks:
            models.setdefault(ref, EvalModel(ref, self.model_dir(ref), None, False))
        return models

    def benchmarks_for(self, model: str) -> list[str]:
        """The benchmarks a model is scored on (the reference model only generates for the win rate)."""
        if model == self.cfg.evaluation.reference_model and model not in self.cell_by_name:
            return []
        return self.benchmarks

    def winrate_mixture(self) -> str:
        opts = self.cfg.evaluation.benchmarks.get("reward-winrate")
        name = (opts.options.get("mixture") if opts else None) or next(iter(self.cfg.mixtures))
        return name

    def winrate_reward_model(self) -> str:
        opts = self.cfg.evaluation.benchmarks.get("reward-winrate")
        return (opts.options.get("reward_model") if opts else None) or next(iter(self.cfg.reward_models))

    def items_file(self, bench: str) -> str:
        return f"{self.root}/data/benchmarks/{bench}/items.jsonl"

    def items_inputs(self, bench: str) -> list[str]:
        """Files a benchmark's items are made from (the win rate's come from a mixture's val split)."""
        if bench == "reward-winrate":
            return [f"{self.root}/data/mixtures/{self.winrate_mixture()}/val.parquet"]
        return []

    def items_options(self, bench: str) -> dict[str, Any]:
        """Benchmark options that depend on the plan's paths."""
        if bench == "reward-winrate":
            return {"mixture_dir": f"{self.root}/data/mixtures/{self.winrate_mixture()}"}
        return {}

    def scores_file(self, model: str, bench: str | None = None) -> str:
        return f"{self.root}/eval/{model}/{bench}/scores.json" if bench else f"{self.root}/eval/{model}/scores.json"

    def generations_file(self, model: str, bench: str) -> str:
        return f"{self.root}/eval/{model}/{bench}/generations.jsonl"

    def max_new_tokens(self, model: str, bench: str) -> int:
        spec = self.cfg.evaluation.benchmarks.get(bench)
        sampling = (spec.sampling if spec and spec.sampling else None) or self.cfg.generation.sampling
        return sampling.max_new_tokens_think if self.eval_models[model].think else sampling.max_new_tokens_nothink

    # ------------------------------------------------------------------ training

    def train_inputs(self, cell_name: str) -> dict[str, str]:
        cell = self.cell_by_name[cell_name]
        mix = f"{self.root}/data/mixtures/{cell.mixture}"
        return {
            "policy": self.policy_dir(cell),
            "reward_model": self.model_dir(cell.rm),
            "train": f"{mix}/train.parquet",
            "val": f"{mix}/val.parquet",
        }

    def settings_digest(self, algo: str, axes: Cell | dict[str, Any] | None) -> str:
        """A digest of the settings a job uses: changing them re-runs exactly the jobs they affect."""
        settings = self.cfg.settings(algo, axes).model_dump(mode="json")
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]

    def resources_of(self, rule: str, algo: str | None = None) -> Resources:
        """A rule's resources: `resources.<rule>_<algo>` (e.g. train_grpo), else `<rule>`, else `default`."""
        return (self.cfg.resources.get(f"{rule}_{algo}") if algo else None) or self.cfg.resources_for(rule)

    def launch_prefix(self, rule: str, algo: str | None = None) -> str:
        """The launcher a training job runs under ('' = plain python; else accelerate/srun, see rlmt.launch)."""
        from rlmt.launch import launch_prefix

        prefix = launch_prefix(self.resources_of(rule, algo))
        return prefix + " " if prefix else ""

    def slurm_resource(self, rule: str, key: str, algo: str | None = None) -> Any:
        """One Snakemake resource of `rule` in the Slurm plugin's terms (gpu/gres/tasks/...; see rlmt.launch).

        Every key has a neutral default so that a rule can declare the same keys for any config.
        """
        from rlmt.launch import slurm_resources

        neutral = {"gpu": 0, "gres": "", "tasks": 1, "tasks_per_gpu": 0, "mpi": "", "slurm_partition": "",
                   "slurm_account": ""}
        return slurm_resources(self.resources_of(rule, algo)).get(key, neutral.get(key))

    def resources(self, rule: str, key: str, algo: str | None = None) -> Any:
        return getattr(self.resources_of(rule, algo), key)

    # ------------------------------------------------------------------ report

    def report_scores(self) -> list[str]:
        return [self.scores_file(m) for m in self.eval_models if self.benchmarks_for(m)]

    def report_checkpoints(self) -> list[str]:
        return [self.final_dir(c) for c in self.cell_names]
