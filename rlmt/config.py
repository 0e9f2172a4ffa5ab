"""The experiment configuration: one validated tree for the whole pipeline.

`config/config.yaml` (the embedded default) and `config/paper.yaml` (the paper's grid) are
instances of :class:`RLMTConfig`. `config/schema.yaml` is generated from these models
(`rlmt config schema`), so the JSON Schema that the Snakefile validates with and the pydantic
models the CLI uses cannot drift apart (a test checks they agree).

Every stage reads its own settings block (``SFTConfig``, ``GRPOConfig`` ...): documented fields
with the paper's values as defaults, like TRL's trainer configs. Each block is defined in its
algorithm's module under ``rlmt/algorithms/`` and re-exported here; the ``algorithms`` and
``overrides`` blocks and the grid's ``algo`` axis are built from that registry. This module imports
nothing heavy so that ``snakemake -n`` stays fast.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from rlmt import algorithms

# Defined with their algorithms and re-exported: `from rlmt.config import GRPOConfig` keeps working.
from rlmt.algorithms.dpo import DPOConfig  # noqa: F401
from rlmt.algorithms.grpo import GRPOConfig  # noqa: F401
from rlmt.algorithms.ppo import PPOConfig  # noqa: F401
from rlmt.algorithms.schedule import Schedule
from rlmt.algorithms.settings import CheckpointConfig, RolloutConfig, Strict  # noqa: F401
from rlmt.algorithms.sft import SFTConfig  # noqa: F401
from rlmt import rewards
# Reward kinds' config entries live with their kinds (rlmt/rewards/<kind>.py); the classifier's are re-exported.
from rlmt.rewards.classifier import RewardModelSpec, RewardModelTrainSpec  # noqa: F401

ALGORITHMS = algorithms.cell_algorithms()  # ("grpo", "ppo", "dpo"): a grid cell's algo
# One reward_models entry: the registered kinds' specs, chosen by `kind` (default: classifier).
RewardSpec = rewards.spec_type()
STARTS = ("warm-start", "zero", "none")
OWN_START = "own-start"  # evaluation.reference_model: each cell against its own starting policy
NAME_RE = r"^[a-z0-9][a-z0-9.\-]*$"  # cell parts are joined with "__", so no underscores


class ConfigError(ValueError):
    """An invalid configuration, with a message that names the offending key."""


# --------------------------------------------------------------------------- models


class ModelSpec(Strict):
    """A policy backbone (``llama-base``, ``qwen-instruct`` ...)."""

    source: str = Field(description="Hugging Face id (networked machine) or a local directory. "
                        "'tiny:<name>' names a model of the offline tiny zoo.")
    family: Literal["llama", "qwen", "gemma"] = Field(
        description="Chat-template family of the instruct sibling (the shipped SFT training templates are per family; "
        "gemma has none: its base model runs zero cells only).")
    variant: Literal["base", "instruct"]
    chat_template_from: str | None = Field(
        default=None,
        description="Model whose chat template a base model gets for warm-start SFT "
        "(the paper wraps base Llama in Llama-3.1-8B-Instruct's template).")
    revision: str | None = None
    trust_remote_code: bool = Field(default=False, description="Off unless this model needs it.")
    dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    longcot: Literal["warm-think"] | None = Field(
        default=None, description="Thinking format the prepared model dir gets, for a model that already thinks "
        "and is trained as it is (grid start 'none', e.g. OpenThinker2-7B: '<think>...</think>' then the answer).")


# --------------------------------------------------------------------------- data


class SourceSpec(Strict):
    """One raw prompt source of a mixture."""

    path: str = Field(description="Local file, or 'hf:<dataset id>[:<split>]' (downloaded on a networked machine). "
                      "'package:demo_prompts' is the project's shipped demo set; '{data_dir}' expands to data_dir.")
    format: Literal["tulu-preference", "rl-parquet", "ultrafeedback", "chat-jsonl", "instruction-jsonl", "auto"] = "auto"
    weight: float = Field(default=1.0, gt=0, description="Relative share of the sampled prompts.")
    name: str | None = Field(default=None, description="Source label written to the mixture's `source` column.")


class FilterSpec(Strict):
    """Curation filters; each is counted in stats.json."""

    keep_multi_turn: bool = Field(default=False, description="Keep earlier turns as context (the paper's data is single-turn).")
    max_prompt_tokens: int | None = Field(default=1024, description="Drop prompts longer than this in the policy's tokens.")
    language: str | None = Field(default="en", description="Keep only this language (None: keep all).")
    dedup_exact: bool = True
    near_dup_threshold: float | None = Field(default=0.9, description="MinHash Jaccard threshold; None disables.")
    near_dup_num_perm: int = Field(default=32, ge=8, description="MinHash permutations (candidates are then verified "
                                   "with the exact Jaccard similarity, so this only sets the recall of LSH banding).")
    near_dup_shingle_words: int = Field(default=3, ge=1, description="Words per shingle for near-duplicate similarity "
                                        "when either prompt is at least near_dup_char_below characters long.")
    near_dup_char_below: int | None = Field(default=400, ge=1, description="Two prompts both shorter than this "
                                            "(characters of the normalized text, roles included) are compared on "
                                            "character n-grams: one changed character removes at most "
                                            "near_dup_shingle_chars of them, where one changed word removes "
                                            "near_dup_shingle_words word n-grams, too many of a short prompt's to "
                                            "reach the threshold. None: words only.")
    near_dup_shingle_chars: int = Field(default=5, ge=1, description="Characters per shingle for two prompts shorter "
                                        "than near_dup_char_below.")
    language_min_confidence: float = Field(default=0.5, ge=0, le=1, description="Drop a prompt for its language only "
                                           "when the detector gives another language at least this confidence.")
    include_patterns: list[str] = Field(default_factory=list, description="Keep only prompts matching one of these regexes.")
    exclude_patterns: list[str] = Field(default_factory=list, description="Drop prompts matching any of these regexes.")


class MixtureSpec(Strict):
    sources: list[SourceSpec]
    n_train: int | None = Field(default=7560, description="Prompts sampled for training (None: all kept).")
    n_val: int = Field(default=250, ge=0, description="Held-out prompts: the reward win rate's evaluation prompts.")
    n_tune: int = Field(default=0, ge=0, description="Tuning prompts (tune.parquet), disjoint from train and val: "
                        "choose hyperparameters on these, never on the evaluation prompts.")
    seed: int = 0
    tokenizer_model: str | None = Field(default=None, description="Model whose tokenizer measures prompt length.")
    filters: FilterSpec = Field(default_factory=FilterSpec)


class TeacherSpec(Strict):
    """An OpenAI-compatible chat endpoint that writes warm-start SFT data."""

    base_url: str
    model: str
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Environment variable holding the key (never the key itself).")
    temperature: float = 1.0
    max_tokens: int = 8192
    max_tries: int = Field(default=2, ge=1, description="Tries per prompt in all (reference: 2); an output failing the format filters is asked again.")
    concurrency: int = 16
    timeout_s: float = 300.0
    max_retries: int = Field(default=6, ge=0, description="HTTP retries per request (429, 5xx, timeouts, malformed bodies).")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per retry, jittered down to "
                             "half, capped at 60 s; a server's Retry-After wins.")


class SFTDataSpec(Strict):
    """Where warm-start SFT data comes from: a teacher, or a file of teacher outputs already made."""

    prompts: list[SourceSpec] = Field(default_factory=list)
    teacher: TeacherSpec | None = None
    path: str | None = Field(default=None, description="JSONL of {id, prompt, thought, response} rows (skips the teacher).")
    n_prompts: int | None = 10000
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> "SFTDataSpec":
        if (self.teacher is None) == (self.path is None):
            raise ValueError("sft_data: give exactly one of 'teacher' or 'path'")
        return self


# --------------------------------------------------------------------------- training

# One settings block per registered algorithm (rlmt.algorithms), in registration order.
AlgorithmSettings = create_model(
    "AlgorithmSettings", __base__=Strict, __module__=__name__,
    **{a.name: (a.settings, Field(default_factory=a.settings)) for a in algorithms.registered()})


# --------------------------------------------------------------------------- grid


class GridBlock(Strict):
    """A cartesian product of cell axes; the grid is the union of its blocks."""

    algo: list[Literal[ALGORITHMS]]
    base: list[str]
    start: list[Literal["warm-start", "zero", "none"]] = Field(
        description="warm-start: SFT first; zero: a base model with the fixed zero template; none: the model as it "
        "is (one that already thinks, with models.<base>.longcot set, e.g. OpenThinker2-7B).")
    think: list[bool]
    rm: list[str]
    mixture: list[str]
    sft_data: str | None = Field(default=None, description="SFT data set for warm-start cells (default: the first). "
                                 "Another set than the first adds '__sft-<name>' to the cell name.")


Override = create_model(
    "Override", __base__=Strict, __module__=__name__,
    __doc__="Settings for the cells that match: e.g. lr 3e-7 and strict for instruct models.",
    match=(dict[str, str | bool | list[str]], Field(description="Axis -> value (or list of values) to match.")),
    **{a.name: (dict[str, Any], Field(default_factory=dict)) for a in algorithms.registered()},  # one per algorithm
    note=(str | None, None))


class Cell(BaseModel):
    """One cell of the ablation grid."""

    model_config = ConfigDict(frozen=True)
    algo: str
    base: str
    start: str
    think: bool
    rm: str
    mixture: str
    sft_data: str | None = None
    named_sft: bool = Field(default=False, description="The SFT set is not the default one: the name says which.")

    @property
    def name(self) -> str:
        parts = [self.algo, self.base, self.start, "think" if self.think else "nothink", self.rm, self.mixture]
        if self.named_sft:
            parts.append(f"sft-{self.sft_data}")
        return "__".join(parts)

    @property
    def policy_name(self) -> str:
        """The initial policy's model directory name under results/models/."""
        if self.start == "zero":
            return f"{self.base}__zero__{'think' if self.think else 'nothink'}"
        if self.start == "none":
            return self.base
        return f"{self.base}__sft__{'think' if self.think else 'nothink'}__{self.sft_data}"


# --------------------------------------------------------------------------- evaluation


class SamplingConfig(Strict):
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens_think: int = 8192
    max_new_tokens_nothink: int = 4096
    seed: int = 0


class GenerationConfig(Strict):
    backend: Literal["auto", "transformers", "vllm", "openai"] = "auto"
    batch_size: int = 16
    dtype: Literal["auto", "bfloat16", "float32"] = Field(
        default="auto", description="Weights of a local model while it generates. auto: bf16 on a GPU that has it, "
        "else fp32; bfloat16 on CPU is ~1.6x faster where the CPU has AMX or AVX512-BF16 (SmolLM2-135M here).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 16


class BenchmarkSpec(Strict):
    enabled: bool = True
    limit: int | None = Field(default=None, description="Evaluate only the first N items (seeded subset).")
    sampling: SamplingConfig | None = Field(default=None, description="Overrides generation.sampling.")
    protocol: Literal["paper", "official", "both"] = "both"
    options: dict[str, Any] = Field(default_factory=dict)


class JudgeSpec(Strict):
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o"
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 120.0
    temperature: float = 0.0
    local_model: str | None = Field(default=None, description="A local transformers model used when no endpoint is set.")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per retry (with jitter).")
    max_backoff_s: float = Field(default=60.0, ge=0, description="Cap on one retry delay.")
    max_tokens: int | None = Field(default=None, description="Judge reply budget; None: each benchmark's own.")
    cache_path: str = Field(default="results/judges/cache.sqlite",
                            description="SQLite cache of judge replies, keyed by model + prompt + parameters.")
    price_input_per_mtok: float | None = Field(default=None, description="USD per 1M prompt tokens (None: built-in table).")
    price_output_per_mtok: float | None = Field(default=None, description="USD per 1M completion tokens (None: built-in table).")


class EvaluationConfig(Strict):
    benchmarks: dict[str, BenchmarkSpec] = Field(default_factory=dict)
    judges: dict[str, JudgeSpec] = Field(default_factory=dict)
    reference_model: str | None = Field(default=None, description="Model the reward win rate compares against; "
                                       f"'{OWN_START}': each cell against its own starting policy (paired, same prompts).")
    evaluate_initial: bool = Field(default=True, description="Also evaluate each cell's starting policy.")
    baselines: list[str] = Field(default_factory=list,
                                 description="Models (keys of `models`) evaluated as prepared, untrained, on every "
                                             "benchmark but the reward win rate: e.g. an imported model's IFEval "
                                             "beside the figure its model card publishes.")


# --------------------------------------------------------------------------- scale-out


class Resources(Strict):
    gpus: int = Field(default=0, ge=0, description="GPUs per node; one training process per GPU (rlmt.launch).")
    nodes: int = Field(default=1, ge=1, description="Nodes; more than one starts one launcher per node via srun.")
    cpus_per_task: int = 2
    mem_mb: int = 8000
    runtime: int = Field(default=60, description="Minutes.")
    slurm_partition: str | None = None
    slurm_account: str | None = None
    launcher: Literal["python", "accelerate"] = "python"
    accelerate_config: str | None = None
    gpu_mem_gb: float | None = Field(default=None, gt=0, description="Memory of one GPU in GB (rlmt preflight checks "
                                     "the per-GPU estimate of a job against it); None: not checked.")


class TrackingConfig(Strict):
    tracking_uri: str | None = Field(default=None, description="None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db in the working directory.")
    experiment: str = Field(default="rlmt", description="MLflow experiment of this config's runs (config.yaml: rlmt, "
                            "paper.yaml: rlmt-paper, so two grids never mix in one experiment).")
    ui_url: str | None = Field(default=None, description="Where the report links runs of a local store (sqlite, "
                               "directory): None: the address `mlflow ui` serves, http://127.0.0.1:5000. An "
                               "http(s) tracking_uri is its own UI and is linked as is.")
    system_metrics_interval_s: float | None = Field(
        default=5.0, gt=0, description="Seconds between samples of MLflow's system metrics (system/*: CPU, memory, "
        "disk, network, GPU) on training and generation runs; null: none. Short jobs get few samples; a run shorter "
        "than one interval gets none.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Level of rlmt's job logs (results/logs/**); `rlmt --log-level` overrides it.")


class PreflightConfig(Strict):
    """What ``rlmt preflight`` assumes of the cluster where no measurement exists (each value is stated in its table)."""

    gpu: str = Field(default="h100", description="GPU model of the training nodes (peak bf16 FLOP/s and memory "
                     "bandwidth from rlmt/resources/gpu_facts.yaml).")
    mfu: float = Field(default=0.35, gt=0, le=1, description="Model FLOPs utilisation assumed for training steps.")
    decode_bandwidth_efficiency: float = Field(
        default=0.6, gt=0, le=1, description="Share of the GPU's memory bandwidth that decoding achieves (each decoding "
        "step reads the weights and the batch's KV cache once).")
    trace: bool = Field(default=True, description="Trace each distinct training job on fake tensors through the real "
                        "model code (cached by its inputs' digest); false: the memory check says what it did not check.")
    cache_dir: str = Field(default="results/.rlmt/preflight-cache", description="Where traces are cached "
                           "($RLMT_PREFLIGHT_CACHE overrides it, e.g. one cache for several working directories).")
    cuda_context_gb: float = Field(default=1.0, ge=0, description="CUDA context and kernels per process (GiB).")
    nccl_buffers_gb: float = Field(default=1.0, ge=0, description="NCCL communication buffers per process (GiB).")
    fragmentation: float = Field(default=0.05, ge=0, lt=1, description="Allocator fragmentation margin: this share of "
                                 "the traced peak is added.")
    memory_limit_fraction: float = Field(
        default=0.9, gt=0, le=1, description="A GPU job whose estimated peak exceeds this share of the GPU's usable "
        "memory blocks (a warning above 0.9 x this share): the rest is the margin for what no trace sees (the "
        "allocator's cached blocks between phases, DeepSpeed's communication buckets, vLLM waking up).")
    disk_quota_gb: float | None = Field(default=None, gt=0, description="Space for results/ (checkpoints dominate); "
                                        "None: disk is reported, not checked.")


# --------------------------------------------------------------------------- root


class RLMTConfig(Strict):
    """The whole experiment."""

    seed: int = 0
    data_dir: str | None = Field(default=None, description="Benchmark/raw data directory; $RLMT_DATA_DIR overrides.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    models: dict[str, ModelSpec]
    reward_models: dict[str, RewardSpec] = Field(description="Rewards by name (the grid's `rm` axis): `kind` "
                                               "selects one (classifier, the default; mix ...).")
    mixtures: dict[str, MixtureSpec]
    sft_data: dict[str, SFTDataSpec] = Field(default_factory=dict)
    grid: list[GridBlock]
    algorithms: AlgorithmSettings = Field(default_factory=AlgorithmSettings)
    overrides: list[Override] = Field(default_factory=list)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    resources: dict[str, Resources] = Field(default_factory=lambda: {"default": Resources()})
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    preflight: PreflightConfig = Field(default_factory=PreflightConfig)

    @field_validator("models", "reward_models", "mixtures", "sft_data")
    @classmethod
    def _names(cls, v: dict[str, Any]) -> dict[str, Any]:
        for name in v:
            if not re.match(NAME_RE, name):
                raise ValueError(f"name {name!r} must match {NAME_RE} (lowercase, digits, '.', '-')")
        return v

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> "RLMTConfig":
        for i, block in enumerate(self.grid):
            for axis, known in (("base", self.models), ("rm", self.reward_models), ("mixture", self.mixtures)):
                for value in getattr(block, axis):
                    if value not in known:
                        raise ValueError(f"grid[{i}].{axis}: {value!r} is not defined; allowed: {sorted(known)}")
            if "zero" in block.start:
                for b in block.base:
                    if self.models[b].variant != "base":
                        raise ValueError(f"grid[{i}].start: 'zero' needs a base model, {b!r} is {self.models[b].variant}")
            if "none" in block.start:
                for b in block.base:
                    for think in block.think:
                        if think != (self.models[b].longcot is not None):
                            raise ValueError(
                                f"grid[{i}].start: 'none' trains {b!r} as it is, so think: {think} needs "
                                f"models.{b}.longcot {'set (the format it thinks in)' if think else 'unset'}")
            if "warm-start" in block.start:
                if not self.sft_data:
                    raise ValueError(f"grid[{i}].start: 'warm-start' needs an entry in sft_data")
                if block.sft_data is not None and block.sft_data not in self.sft_data:
                    raise ValueError(f"grid[{i}].sft_data: {block.sft_data!r} is not defined; allowed: {sorted(self.sft_data)}")
        for name, rm in self.reward_models.items():
            rewards.reward_inputs(name, self.reward_models)  # a mix's parts exist, no chain of mixes loops back
            if not isinstance(rm, RewardModelSpec):
                continue  # the checks below are the classifier's (a model dir of its own)
            if rm.train is not None:
                for key in ("backbone", "policy"):
                    value = getattr(rm.train, key)
                    if value is not None and value not in self.models:
                        raise ValueError(f"reward_models.{name}.train.{key}: {value!r} is not defined; "
                                         f"allowed: {sorted(self.models)}")
                if name in self.models:
                    raise ValueError(f"reward_models.{name}: the name is also a `models` entry (one results/models dir)")
        for name, model in self.models.items():
            if model.chat_template_from is not None and model.chat_template_from not in self.models:
                raise ValueError(f"models.{name}.chat_template_from: {model.chat_template_from!r} is not defined; "
                                 f"allowed: {sorted(self.models)}")
        for i, ov in enumerate(self.overrides):
            for axis in ov.match:
                if axis not in Cell.model_fields:
                    raise ValueError(f"overrides[{i}].match: unknown axis {axis!r}; allowed: {sorted(Cell.model_fields)}")
            for algo in (a.name for a in algorithms.registered()):
                block_cls = type(getattr(self.algorithms, algo))
                try:
                    block_cls.model_validate({**getattr(self.algorithms, algo).model_dump(), **getattr(ov, algo)})
                except ValidationError as err:
                    raise ValueError(f"overrides[{i}].{algo}: {_first_error(err)}") from None
        ref = self.evaluation.reference_model
        if ref is not None and ref != OWN_START and ref not in self.models and ref not in self.reward_models:
            raise ValueError(f"evaluation.reference_model: {ref!r} is not defined; allowed: '{OWN_START}' or one of "
                             f"{sorted(self.models)}")
        for name in self.evaluation.baselines:
            if name not in self.models:
                raise ValueError(f"evaluation.baselines: {name!r} is not a model; allowed: {sorted(self.models)}")
        for bench in self.evaluation.benchmarks:
            if bench not in KNOWN_BENCHMARKS:
                raise ValueError(f"evaluation.benchmarks: unknown benchmark {bench!r}; allowed: {sorted(KNOWN_BENCHMARKS)}")
        if "default" not in self.resources:
            raise ValueError("resources: a 'default' entry is required")
        for cell in self.cells():  # a batch-relative reward (a mix) has mean 0 on every validation batch
            if getattr(self.reward_models[cell.rm], "batch_relative", False) \
                    and algorithms.get(cell.algo).validates_on_mixture_val:
                checkpoints = getattr(self.settings(cell.algo, cell), "checkpoints", None)
                if checkpoints is not None and checkpoints.select_step == "best_val_reward":
                    raise ValueError(f"cell {cell.name}: reward_models.{cell.rm} is batch-relative (kind "
                                     f"{rewards.kind_of(self.reward_models[cell.rm])}: its mean over any batch is 0), so "
                                     f"algorithms.{cell.algo}.checkpoints.select_step 'best_val_reward' cannot tell "
                                     "checkpoints apart: select 'last' or a step")
        if (info.context or {}).get("check_schedules", True):  # rlmt preflight reports these in its table instead
            for cell in self.cells():
                problem = select_step_problem(self, cell)
                if problem:
                    raise ValueError(problem)
        return self

    # ----------------------------------------------------------------- derived views

    def cells(self) -> list[Cell]:
        """Every cell of the grid, in a stable order, without duplicates."""
        seen: dict[str, Cell] = {}
        default_sft = next(iter(self.sft_data), None)
        for block in self.grid:
            for algo, base, start, think, rm, mix in itertools.product(
                    block.algo, block.base, block.start, block.think, block.rm, block.mixture):
                sft = (block.sft_data or default_sft) if start == "warm-start" else None
                cell = Cell(algo=algo, base=base, start=start, think=think, rm=rm, mixture=mix, sft_data=sft,
                            named_sft=sft is not None and sft != default_sft)
                seen.setdefault(cell.name, cell)
        return list(seen.values())

    def cell(self, name: str) -> Cell:
        for cell in self.cells():
            if cell.name == name:
                return cell
        raise ConfigError(f"cell {name!r} is not in the grid; run `rlmt config cells` to list them")

    def settings(self, algo: str, cell: "Cell | dict[str, Any] | None" = None) -> BaseModel:
        """The settings block of `algo` (a registered algorithm: 'sft', 'grpo' ...) with the cell's overrides applied.

        `cell` may also be a partial mapping of axes (SFT is shared by the cells of one
        base × think × sft_data): an override matches only if every axis it names is given and equal.
        """
        base = getattr(self.algorithms, algo)
        merged = base.model_dump()
        axes = cell.model_dump() if isinstance(cell, Cell) else dict(cell or {})
        for ov in self.overrides:
            if axes and _matches(ov.match, axes):
                merged = _deep_merge(merged, getattr(ov, algo))
        return type(base).model_validate(merged)

    def resources_for(self, rule: str) -> Resources:
        return self.resources.get(rule, self.resources["default"])


# --------------------------------------------------------------------------- training schedules


def training_schedule(cfg: "RLMTConfig", cell: Cell, n_train: int | None = None) -> Schedule | None:
    """The step schedule of a cell's RL run; None when it depends on data not known before the run.

    `n_train` defaults to the mixture's n_train. Each algorithm counts its own steps
    (``rlmt.algorithms.<algo>.schedule``): GRPO as TRL 1.16 does, PPO one step per rollout of
    ``prompts_per_step`` prompts; DPO's step count depends on how many pairs survive the filters,
    known only after sampling: None.
    """
    n = n_train if n_train is not None else cfg.mixtures[cell.mixture].n_train
    if n is None:
        return None
    return algorithms.get(cell.algo).schedule(cfg.settings(cell.algo, cell), n)


def select_step_problem(cfg: "RLMTConfig", cell: Cell, n_train: int | None = None) -> str | None:
    """Why the cell's ``checkpoints.select_step`` cannot be selected at the end of its run, or None."""
    if cell.algo not in ALGORITHMS:
        return None
    n = n_train if n_train is not None else cfg.mixtures[cell.mixture].n_train
    problem = algorithms.get(cell.algo).select_step_problem(cfg.settings(cell.algo, cell), n)
    return f"cell {cell.name}: algorithms.{cell.algo}.checkpoints.select_step: {problem}" if problem else None


KNOWN_BENCHMARKS = {
    "demo-if", "reward-winrate", "ifeval", "ifbench", "mmlu-redux", "math-500", "zebralogic", "popqa",
    "alpacaeval2", "wildbench", "arenahard-v2", "creative-writing-v3",
}


def _matches(match: dict[str, Any], axes: dict[str, Any]) -> bool:
    for axis, want in match.items():
        if axis not in axes:
            return False
        have = axes[axis]
        wants = want if isinstance(want, list) else [want]
        if isinstance(have, bool):
            wants = [w if isinstance(w, bool) else w in ("think", "true", "True") for w in wants]
        if have not in wants:
            return False
    return True


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "literal_error" and "expected" in e.get("ctx", {}):
        msg = f"{msg} (allowed: {e['ctx']['expected']})"
    return f"{loc}: {msg}"


def parse_config(raw: dict[str, Any], *, check_schedules: bool = True) -> RLMTConfig:
    """Validate a raw config mapping; errors name the key path and, where known, the allowed values.

    `check_schedules`: reject an int select_step that a cell's schedule never saves (rlmt preflight
    turns it off to report every such cell in its table).
    """
    try:
        return RLMTConfig.model_validate(raw, context={"check_schedules": check_schedules})
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = e["msg"]
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("invalid rlmt config:\n" + "\n".join(lines)) from None


def load_config(path: str | Path) -> RLMTConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return parse_config(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema that config/schema.yaml holds (draft 2020-12, as Snakemake's validate() reads it)."""
    schema = RLMTConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rlmt configuration"
    return schema


def data_dir(cfg: RLMTConfig) -> Path | None:
    """The data directory: $RLMT_DATA_DIR, else the config's data_dir."""
    import os

    env = os.environ.get("RLMT_DATA_DIR")
    value = env or cfg.data_dir
    return Path(value) if value else None
