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
results/data/rm_pairs/<rm>/pairs.jsonl            preference pairs of a reward model the pipeline trains
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

from rlmt.config import OWN_START, Cell, RLMTConfig, Resources, parse_config

JUDGED_BENCHMARKS = {"alpacaeval2", "wildbench", "arenahard-v2", "creative-writing-v3"}
RULE_BENCHMARKS = {"demo-if", "ifeval", "ifbench", "mmlu-redux", "math-500", "zebralogic", "popqa"}
MODEL_FREE_ITEMS = RULE_BENCHMARKS | JUDGED_BENCHMARKS
CONFIG_SNAPSHOT = "results/.rlmt/config.yaml"

# The `resources` entries of the config a cluster rule reads (the other rules are `localrules`), first match wins, else `default`
# (`<first>_<algo>`, e.g. train_grpo, comes before them). Scoring the win rate loads the reward model
# onto a GPU, as generation loads the policy: without an entry of its own it runs where generation runs.
RESOURCE_ENTRIES: dict[str, tuple[str, ...]] = {
    "prepare_model": ("prepare",),
    "curate": ("curate",),
    "sft_data": ("sft_data",),
    "sft": ("sft",),
    "train": ("train",),
    "generate": ("generate",),
    "score_winrate": ("score_winrate", "generate"),
    "judge": ("judge",),
    "rm_pairs": ("rm_pairs", "generate"),
    "train_rm": ("train_rm", "train"),
    "rubrics": ("rubrics", "sft_data"),  # a CPU job waiting on a teacher endpoint, like sft_data
    "reward_calibration": ("reward_calibration", "generate"),  # generation, then scoring
}


def _digest(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalModel:
    """A model that gets evaluated: a cell's trained policy, an initial policy, or a reference."""

    name: str
    directory: str
    cell: str | None  # the cell whose MLflow parent run the evaluation nests under
    think: bool


class Plan:
    def __init__(self, cfg: RLMTConfig | dict[str, Any], *, root: str = "results", base_dir: str | Path | None = None):
        """`root`: where results go; `base_dir`: what relative config paths (accelerate configs) resolve against
        (the workflow's base directory; default: this package's source tree)."""
        from rlmt.launch import SOURCE_ROOT

        self.cfg = cfg if isinstance(cfg, RLMTConfig) else parse_config(cfg)
        self.root = root
        self.base_dir = Path(base_dir) if base_dir else SOURCE_ROOT

    # ------------------------------------------------------------------ config snapshot

    def write_config_snapshot(self, path: str | Path = CONFIG_SNAPSHOT) -> str:
        """Write the validated, effective config where every job reads it (rewritten only on change)."""
        from rlmt.files import replace_if_changed

        replace_if_changed(path, yaml.safe_dump(self.cfg.model_dump(mode="json"), sort_keys=False))
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

    @cached_property
    def classifier_rewards(self) -> dict[str, Any]:
        """The ``reward_models`` entries that are reward-model directories (kind classifier), by name."""
        from rlmt.rewards import kind_of

        return {n: rm for n, rm in self.cfg.reward_models.items() if kind_of(rm) == "classifier"}

    def prepared_models(self) -> list[str]:
        """Models `prepare_model` makes (reward models the pipeline trains come from `train_rm`)."""
        return sorted({*self.cfg.models, *(n for n, rm in self.classifier_rewards.items() if rm.train is None)})

    def trained_reward_models(self) -> list[str]:
        return sorted(n for n, rm in self.classifier_rewards.items() if rm.train is not None)

    def rm_pairs_file(self, rm: str) -> str:
        return f"{self.root}/data/rm_pairs/{rm}/pairs.jsonl"

    def rm_pairs_inputs(self, rm: str) -> dict[str, Any]:
        """The inputs of a trained reward model's pairs: its policy, and every prompt file it must not share.

        Excluded: the train and val splits of every mixture and the items of every benchmark of the plan.
        """
        spec = self.cfg.reward_models[rm].train
        exclude = [f"{self.root}/data/mixtures/{m}/{split}.parquet" for m in sorted(self.cfg.mixtures)
                   for split in ("train", "val", "tune")]
        exclude += [self.items_file(b) for b in self.benchmarks]
        return {"policy": self.model_dir(spec.policy or spec.backbone), "exclude": exclude}

    def rm_reference(self, rm: str) -> str:
        """The reference-answers file of a trained reward model ('{data_dir}' expanded)."""
        from rlmt.config import data_dir

        path = self.cfg.reward_models[rm].train.reference
        if "{data_dir}" in path:
            root = data_dir(self.cfg)
            if root is None:
                raise ValueError(f"reward_models.{rm}.train.reference {path!r} uses {{data_dir}}, but neither "
                                 "$RLMT_DATA_DIR nor data_dir is set")
            path = path.replace("{data_dir}", str(root))
        return path

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
        for name in self.cfg.evaluation.baselines:  # the prepared model as it is: start 'none'
            models.setdefault(name, EvalModel(name, self.model_dir(name), None, self.parse_policy(name)["think"]))
        ref = self.cfg.evaluation.reference_model
        if ref == OWN_START and "reward-winrate" in self.benchmarks:
            for cell in self.cells:  # each starting policy generates the answers its cell is compared with
                models.setdefault(cell.policy_name, EvalModel(cell.policy_name, self.policy_dir(cell), None, cell.think))
        elif ref and "reward-winrate" in self.benchmarks:
            models.setdefault(ref, EvalModel(ref, self.model_dir(ref), None, False))
        return models

    def winrate_reference(self, model: str) -> str:
        """The model whose reward-winrate answers `model`'s are compared with."""
        ref = self.cfg.evaluation.reference_model
        if ref == OWN_START:
            cell = self.cell_by_name.get(model)
            return cell.policy_name if cell else model
        return ref

    def benchmarks_for(self, model: str) -> list[str]:
        """The benchmarks a model is scored on (the reference model only generates for the win rate).

        With the 'own-start' reference a starting policy is a reference: scored on the other benchmarks
        when evaluate_initial is set (its win rate against itself would say nothing), else on none.
        """
        ref = self.cfg.evaluation.reference_model
        if model in self.cell_by_name:
            return self.benchmarks
        all_but_winrate = [b for b in self.benchmarks if b != "reward-winrate"]
        if model in self.cfg.evaluation.baselines:  # untrained: nothing of its own to compare against
            return all_but_winrate
        if ref == OWN_START:
            if self.cfg.evaluation.evaluate_initial:
                return all_but_winrate
            return []
        if model == ref:
            return []
        return self.benchmarks

    def winrate_mixture(self) -> str:
        opts = self.cfg.evaluation.benchmarks.get("reward-winrate")
        name = (opts.options.get("mixture") if opts else None) or next(iter(self.cfg.mixtures))
        return name

    def winrate_reward_model(self) -> str:
        """The ``reward_models`` entry that judges the win rate (option ``reward_model``, else the first entry)."""
        opts = self.cfg.evaluation.benchmarks.get("reward-winrate")
        return (opts.options.get("reward_model") if opts else None) or next(iter(self.cfg.reward_models))

    # ------------------------------------------------------------------ rewards

    def reward_files(self, name: str) -> dict[str, str]:
        """The files reward `name` needs, ``{key: path}`` (:func:`rlmt.rewards.reward_inputs` under the results root)."""
        from rlmt.rewards import reward_inputs

        return {key: f"{self.root}/{rel}" for key, rel in reward_inputs(name, self.cfg.reward_models).items()}

    def winrate_reward_files(self) -> list[str]:
        """The files of the reward that judges the win rate (a score_winrate job's inputs)."""
        return sorted(set(self.reward_files(self.winrate_reward_model()).values()))

    def reward_args(self, name: str) -> str:
        """The command-line arguments that give a job reward `name` and its files (``--reward-input KEY=PATH ...``)."""
        import shlex

        return " ".join(f"--reward-input {shlex.quote(f'{key}={path}')}" for key, path in self.reward_files(name).items())

    def items_file(self, bench: str) -> str:
        return f"{self.root}/data/benchmarks/{bench}/items.jsonl"

    def items_inputs(self, bench: str) -> list[str]:
        """Files a benchmark's items are made from (the win rate's come from a mixture's val split, or its tuning
        split with the option ``split: tune``)."""
        if bench == "reward-winrate":
            opts = self.cfg.evaluation.benchmarks.get("reward-winrate")
            split = (opts.options.get("split") if opts else None) or "val"
            return [f"{self.root}/data/mixtures/{self.winrate_mixture()}/{split}.parquet"]
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

    def train_inputs(self, cell_name: str) -> dict[str, Any]:
        """A training job's inputs: ``policy``, ``reward`` (the files of the cell's reward, a list), ``train``, ``val``."""
        cell = self.cell_by_name[cell_name]
        mix = f"{self.root}/data/mixtures/{cell.mixture}"
        return {
            "policy": self.policy_dir(cell),
            "reward": sorted(set(self.reward_files(cell.rm).values())),
            "train": f"{mix}/train.parquet",
            "val": f"{mix}/val.parquet",
        }

    def settings_digest(self, algo: str, axes: Cell | dict[str, Any] | None) -> str:
        """A digest of the settings a job uses: changing them re-runs exactly the jobs they affect."""
        return _digest(self.cfg.settings(algo, axes).model_dump(mode="json"))

    def resources_of(self, name: str, algo: str | None = None) -> Resources:
        """A resources entry: `resources.<name>_<algo>` (e.g. train_grpo), else `<name>`, else `default`."""
        return (self.cfg.resources.get(f"{name}_{algo}") if algo else None) or self.cfg.resources_for(name)

    def rule_resources(self, rule: str, algo: str | None = None) -> Resources:
        """The resources entry a cluster rule runs with (see RESOURCE_ENTRIES)."""
        names = RESOURCE_ENTRIES[rule]
        candidates = ([f"{names[0]}_{algo}"] if algo else []) + list(names)
        found = next((self.cfg.resources[n] for n in candidates if n in self.cfg.resources), None)
        return found or self.cfg.resources["default"]

    def launch_prefix(self, rule: str, algo: str | None = None) -> str:
        """The launcher a training job runs under ('' = plain python; else accelerate/srun, see rlmt.launch)."""
        from rlmt.launch import launch_prefix

        prefix = launch_prefix(self.rule_resources(rule, algo), base=self.base_dir)
        return prefix + " " if prefix else ""

    def job_resources(self, rule: str, algo: str | None = None) -> dict[str, Any]:
        """Every Snakemake resource of one job of `rule`, in snakemake-executor-plugin-slurm's terms.

        Keys without a value are left out (never ``""``), so the profile's default-resources
        (account, partition) still apply to them.
        """
        from rlmt.launch import slurm_resources

        return slurm_resources(self.rule_resources(rule, algo))

    def resource_keys(self, rule: str) -> list[str]:
        """The resource names `rule` declares: those any of its jobs has (train: over the grid's algorithms)."""
        algos = sorted({c.algo for c in self.cells}) if rule == "train" else [None]
        return sorted({key for algo in algos for key in self.job_resources(rule, algo)})

    def job_threads(self, rule: str, algo: str | None = None) -> int:
        return self.rule_resources(rule, algo).cpus_per_task

    # ------------------------------------------------------------------ settings digests and secrets

    def generation_digest(self, model: str, bench: str) -> str:
        """A digest of what a generation job's output depends on beyond its input files."""
        spec = self.cfg.evaluation.benchmarks.get(bench)
        sampling = (spec.sampling if spec and spec.sampling else None) or self.cfg.generation.sampling
        gen = self.cfg.generation
        return _digest({"sampling": sampling.model_dump(mode="json"), "backend": gen.backend,
                        "base_url": gen.base_url, "max_new_tokens": self.max_new_tokens(model, bench),
                        "think": self.eval_models[model].think,
                        **({"dtype": gen.dtype} if gen.dtype != "auto" else {})})

    def judge_name(self, bench: str) -> str | None:
        """The judge a judged benchmark uses: its ``judge`` option, else the only configured judge."""
        spec = self.cfg.evaluation.benchmarks.get(bench)
        judges = self.cfg.evaluation.judges
        name = (spec.options.get("judge") if spec else None) or (next(iter(judges)) if len(judges) == 1 else None)
        return name

    def judge_digest(self, bench: str) -> str:
        """A digest of the judge (model, endpoint, sampling) and the benchmark's protocol and options."""
        spec = self.cfg.evaluation.benchmarks.get(bench)
        judge = self.cfg.evaluation.judges.get(self.judge_name(bench) or "")
        return _digest({"judge": judge.model_dump(mode="json") if judge else None,
                        "benchmark": spec.model_dump(mode="json", exclude={"enabled"}) if spec else None})

    def api_key_envs(self) -> list[str]:
        """Environment variables holding the API keys that this plan's jobs call (teachers, judges, HTTP generation)."""
        names = set()
        for name in {c.sft_data for c in self.cells if c.sft_data}:
            teacher = self.cfg.sft_data[name].teacher
            if teacher is not None and teacher.api_key_env:
                names.add(teacher.api_key_env)
        for bench in self.benchmarks:
            if bench in JUDGED_BENCHMARKS:
                judge = self.cfg.evaluation.judges.get(self.judge_name(bench) or "")
                if judge is not None and judge.api_key_env:
                    names.add(judge.api_key_env)
        if self.cfg.generation.backend == "openai" and self.cfg.generation.api_key_env:
            names.add(self.cfg.generation.api_key_env)
        from rlmt.rewards import reward_api_key_envs

        rewards = {c.rm for c in self.cells} | ({self.winrate_reward_model()} if "reward-winrate" in self.benchmarks else set())
        for reward in rewards:  # a rubric judge's and its teacher's keys (a mix's parts included)
            names.update(reward_api_key_envs(reward, self.cfg.reward_models))
        return sorted(names)

    # ------------------------------------------------------------------ report

    def report_scores(self) -> list[str]:
        return [self.scores_file(m) for m in self.eval_models if self.benchmarks_for(m)]

    def report_checkpoints(self) -> list[str]:
        return [self.final_dir(c) for c in self.cell_names]
