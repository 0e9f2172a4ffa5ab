"""``rlmt preflight``: what would fail a cell hours into its run, found from the config in seconds.

For every cell of a config, without a GPU, a download or a model load:

=============  ==================================================================================
check          blocker when
=============  ==================================================================================
config         the config does not validate (the message names the key)
template       the SFT training template does not resolve, or does not render the model's own chat
               template with an assistant mask of exactly the assistant turns (for the paper's
               models: the shipped templates and the family facts in resources/model_facts.yaml;
               for a local model dir: its tokenizer_config.json; for the tiny zoo: its templates)
launcher       the algorithm cannot run under the rule's launcher and sharding (PPO: plain, DDP or
               FSDP2, never DeepSpeed), the accelerate/DeepSpeed config is missing, or the batch
               geometry does not divide over the job's processes
schedule       the selected step is never saved by the schedule (dataset size, epochs, prompts
               per rollout and per update, save steps)
remote-code    a model whose repository ships modelling code lacks trust_remote_code
memory         the job's per-GPU peak, traced on fake tensors through the real model code and sharded by
               the launcher's rule, plus vLLM's share and the named terms the trace cannot see, exceeds
               the GPU's usable memory (warning above 90%; :mod:`rlmt.preflight.gpu_job`)
vllm-kv        one sequence of the colocated engine's max_model_len does not fit vLLM's KV budget
               (vLLM refuses to start); a warning when fewer than half of a rollout's sequences fit at
               once (:mod:`rlmt.preflight.vllm_kv`)
runtime        the job's estimated wall time (rollout decoding, traced FLOPs at the configured MFU,
               checkpoint writes; :mod:`rlmt.preflight.runtime_estimate`) exceeds the rule's Slurm runtime
disk           the grid's checkpoints (size x kept + the selected one) exceed preflight.disk_quota_gb
               (:mod:`rlmt.preflight.disk`); the cells that keep every checkpoint are named
host-memory    the node's ranks load more into host memory than the rule's mem_mb
judge          a rubric reward's judge (also a mix's rubric part): its calls, tokens, time and cost per step
               and per run are stated; a blocker when its endpoint is not a URL, its key variable is unset,
               or the judge's time plus the job's exceeds the rule's runtime (:mod:`rlmt.preflight.judge_reward`)
rubrics        a rubric source that cannot reach the reward (a column without its file, a missing file, a
               teacher whose key variable is unset); a generated set's teacher calls and cost
resources      a rule's resources are incomplete (a cluster config where some rule has no partition,
               non-positive runtime/memory/CPUs)
tracking       (warning) a Slurm config with no MLflow server: one SQLite file on a shared filesystem
=============  ==================================================================================

Each GPU job's work per rank comes from its algorithm's ``job_shape`` (:mod:`rlmt.algorithms`), the same settings
its trainer reads; traces are cached by their inputs' digest (``preflight.cache_dir``), so a rerun takes
milliseconds per job. ``--no-trace`` (``preflight.trace: false``) skips the traces and says what was not checked.

In the workflow the check is not a job: `gate` runs in the Snakemake process while it reads the Snakefile,
before the DAG is built (and in a dry run), and writes ``results/.rlmt/preflight.ok``, which every SFT and
training job takes as input. A blocker stops Snakemake before any job starts. Why not a rule: a job that must
rerun makes Snakemake force every job downstream of it, so a preflight rule rerun by any config edit reran
every SFT and training job; taken as ``ancient()`` instead, those jobs were never re-examined at all, so a
changed training setting reran nothing. The marker's text never changes, so it never makes a job rerun.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlmt import algorithms
from rlmt.config import Cell, ConfigError, RLMTConfig, Resources, parse_config, select_step_problem, training_schedule
from rlmt.files import replace_if_changed
from rlmt.launch import SOURCE_ROOT, accelerate_config_files

GB = 1e9
WARN_FRACTION = 0.9
BLOCKER, WARNING, OK = "BLOCKER", "warning", "ok"

@dataclass
class Finding:
    cell: str
    check: str
    level: str
    key: str
    message: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    budgets: list[tuple[str, Any]] = field(default_factory=list)  # (cell, gpu_job.JobBudget) per GPU job

    def add(self, cell: str, check: str, level: str, key: str, message: str) -> None:
        self.findings.append(Finding(cell, check, level, key, message))

    @property
    def blockers(self) -> list[Finding]:
        return [f for f in self.findings if f.level == BLOCKER]

    def table(self) -> str:
        rows = [("cell", "check", "status", "key", "detail")]
        rows += [(f.cell, f.check, f.level, f.key, f.message) for f in self.findings]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        n_b = len(self.blockers)
        n_w = sum(f.level == WARNING for f in self.findings)
        lines.append(f"{len(self.cells)} cells: {n_b} blocker(s), {n_w} warning(s)")
        return "\n".join(lines)

    def budget_table(self) -> str:
        """One row per GPU job: memory per GPU, vLLM's KV headroom, hours against the limit, disk (GiB, h, TB)."""
        if not self.budgets:
            return ""
        rows = [("cell", "job", "GPU memory", "peak at", "vLLM KV", "hours", "disk")]
        for cell, b in self.budgets:
            mem = f"{b.memory / 2**30:.1f}/{b.usable / 2**30:.1f} GiB" if b.memory_parts else "not traced"
            kv = "-" if b.kv is None else ("does not fit" if not b.kv.fits_one_request else
                                          f"{b.kv.kv_budget / 2**30:.1f} GiB, {b.kv.sequences_at_once} seqs")
            hours = f"{b.estimate.hours:.1f}/{b.limit_hours:g}" if b.estimate is not None and b.estimate.parts else "-"
            disk = f"{b.disk.total / 1e12:.2f} TB" if b.disk is not None else "-"
            rows.append((cell, b.job, mem, b.memory_phase or "-", kv, hours, disk))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(len(r))).rstrip() for r in rows)


# ----------------------------------------------------------------------------- facts


def load_facts() -> dict[str, Any]:
    from importlib import resources

    return yaml.safe_load(resources.files("rlmt.resources").joinpath("model_facts.yaml").read_text())


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    qkv_bias: bool = False
    tied_embeddings: bool = False
    head: str = "lm"  # "lm" (causal LM) or "score" (one-label sequence classifier)

    @property
    def params(self) -> int:
        """Parameters of a Llama/Qwen2-style decoder with these shapes."""
        h, kv = self.hidden, self.kv_heads * (self.hidden // self.heads)
        attn = 2 * h * h + 2 * h * kv + ((h + 2 * kv) if self.qkv_bias else 0)
        per_layer = attn + 3 * h * self.intermediate + 2 * h
        out = (0 if self.tied_embeddings else self.vocab * h) if self.head == "lm" else h
        return self.vocab * h + self.layers * per_layer + h + out


def model_shape(source: str, facts: dict[str, Any]) -> Shape | None:
    """Shapes of a model: the facts for a paper model, its config.json for a local dir, None if unknown."""
    entry = facts["models"].get(source)
    if entry is not None:
        arch = dict(facts["architectures"][entry["architecture"]])
        arch.pop("params", None)
        return Shape(**arch, head=entry.get("head", "lm"))
    cfg_file = Path(source) / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        try:
            head = "score" if any("Classification" in a for a in c.get("architectures") or []) else "lm"
            return Shape(hidden=c["hidden_size"], intermediate=c["intermediate_size"], layers=c["num_hidden_layers"],
                         heads=c["num_attention_heads"], kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
                         vocab=c["vocab_size"], qkv_bias=c.get("model_type") == "qwen2",
                         tied_embeddings=bool(c.get("tie_word_embeddings", False)), head=head)
        except KeyError:
            return None
    return None


# ----------------------------------------------------------------------------- launcher and sharding


def sharding_of(res: Resources, root: Path) -> tuple[str, str | None]:
    """('single'|'ddp'|'zero2'|'zero3'|'fsdp'|'fsdp2', problem) for a rule's resources."""
    procs = max(res.gpus, 1) * res.nodes
    if res.launcher != "accelerate" or not res.accelerate_config:
        return ("single" if procs == 1 else "ddp"), None
    path, ds_path = accelerate_config_files(res.accelerate_config, root)
    if not path.is_file():
        where = "" if Path(res.accelerate_config).is_absolute() else f" (relative paths resolve against {root})"
        return "single", f"accelerate config {res.accelerate_config} not found{where}"
    acc = yaml.safe_load(path.read_text()) or {}
    kind = str(acc.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        ds = acc.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        if ds_path is not None:
            if not ds_path.is_file():
                return "zero3", f"DeepSpeed config {ds['deepspeed_config_file']} not found"
            stage = (json.loads(ds_path.read_text()).get("zero_optimization") or {}).get("stage", stage)
        return ("zero3" if int(stage or 0) == 3 else "zero2"), None
    if kind == "FSDP":
        version = int((acc.get("fsdp_config") or {}).get("fsdp_version", 1))
        return ("fsdp2" if version == 2 else "fsdp"), None
    return ("single" if procs == 1 else "ddp"), None


# ----------------------------------------------------------------------------- memory


# ----------------------------------------------------------------------------- the checks


def _template_check(cfg: RLMTConfig, cell: Cell, report: Report, facts: dict[str, Any]) -> None:
    from rlmt.resources import chat_templates

    axes = {"base": cell.base, "start": cell.start, "think": cell.think, "sft_data": cell.sft_data}
    ref = cfg.settings("sft", axes).chat_template_path
    key = "algorithms.sft.chat_template_path"
    model = cfg.models[cell.base]
    template_model = cfg.models[model.chat_template_from] if model.chat_template_from else model
    source = template_model.source
    original, origin = _chat_template_text(source, facts)
    try:
        known = chat_templates.shipped(ref)
        training = chat_templates.resolve(ref).read_text() if ref else None
    except chat_templates.TemplateError as err:
        report.add(cell.name, "template", BLOCKER, key, str(err))
        return
    if origin == "facts":  # a paper model: its template is known by name, not by text
        if known is None or training is None:
            report.add(cell.name, "template", BLOCKER, key,
                       f"{source}'s chat template ({original}) has no {{% generation %}} markers and TRL 1.16 cannot "
                       "patch it for every family: set a shipped training template (package:llama3_1_training, "
                       "package:qwen2_5_training)")
        elif known.reproduces != original:
            report.add(cell.name, "template", BLOCKER, key,
                       f"{ref} reproduces {known.reproduces}'s template, but {cell.base} wears {original}'s")
        else:
            report.add(cell.name, "template", OK, key, f"{ref} reproduces {original}'s template")
        return
    if original is None:
        level = WARNING if origin == "unknown" else BLOCKER
        report.add(cell.name, "template", level, key, f"{source}: chat template not known before the model is "
                   "prepared" if level == WARNING else f"{source} has no chat template")
        return
    if training is None:
        if chat_templates.has_markers(original):
            report.add(cell.name, "template", OK, key, "the model's own template has generation markers")
        else:
            report.add(cell.name, "template", BLOCKER, key, f"{source}'s chat template has no generation markers: "
                       "set sft.chat_template_path")
        return
    problems = chat_templates.template_problems(original, training, end_of_turn=known.end_of_turn if known else "",
                                                bos_token=known.bos_token if known else None)
    if problems:
        report.add(cell.name, "template", BLOCKER, key, f"{ref} does not fit {source}: " + "; ".join(problems[:2]))
    else:
        report.add(cell.name, "template", OK, key, f"{ref} renders {source}'s template")


def _chat_template_text(source: str, facts: dict[str, Any]) -> tuple[str | None, str]:
    """(template text or the name of the model it is, 'facts' | 'local' | 'tiny' | 'unknown')."""
    if source in facts["models"]:
        return facts["models"][source].get("chat_template"), "facts"
    if source.startswith("tiny:"):
        from rlmt.models.templates import CHATML_TEMPLATE, LLAMA3_TEMPLATE, REWARD_TEMPLATE
        from rlmt.models.tiny import TINY_MODELS

        spec = TINY_MODELS.get(source[len("tiny:"):])
        if spec is None or not spec.chat:
            return None, "tiny"
        return {"llama": LLAMA3_TEMPLATE, "qwen": CHATML_TEMPLATE, "reward": REWARD_TEMPLATE}[spec.arch], "tiny"
    tok_cfg = Path(source) / "tokenizer_config.json"
    if tok_cfg.is_file():
        data = json.loads(tok_cfg.read_text())
        jinja = Path(source) / "chat_template.jinja"
        return data.get("chat_template") or (jinja.read_text() if jinja.is_file() else None), "local"
    return None, "unknown"


def _launcher_check(cfg: RLMTConfig, cell: Cell, rule: str, algo: str, report: Report, root: Path,
                    options: "Options") -> None:
    from rlmt.workflow import Plan

    plan = Plan(cfg)
    res = plan.resources_of(rule, algo if rule == "train" else None)
    res_key = f"resources.{rule}_{algo}" if rule == "train" and f"{rule}_{algo}" in cfg.resources else \
        f"resources.{rule}" if rule in cfg.resources else "resources.default"
    sharding, problem = sharding_of(res, root)
    label = "sft" if rule == "sft" else algo
    if problem:
        report.add(cell.name, "launcher", BLOCKER, f"{res_key}.accelerate_config", f"{label}: {problem}")
        return
    algorithm = algorithms.get(algo)
    if not algorithm.supports(sharding):
        report.add(cell.name, "launcher", BLOCKER, f"{res_key}.accelerate_config",
                   f"{label} does not run under {sharding} ({res.accelerate_config}); "
                   f"supported: {sorted(algorithm.supported_sharding)}")
        return
    world = max(res.gpus, 1) * res.nodes
    geometry = algorithm.geometry_problem(_settings(cfg, cell, algorithm), world)
    if geometry:
        report.add(cell.name, "launcher", BLOCKER, geometry[0], f"{label} on {world} processes: {geometry[1]}")
        return
    report.add(cell.name, "launcher", OK, f"{res_key}.accelerate_config", f"{label}: {sharding} on {world} process(es)")
    if res.gpus > 0:
        _gpu_job_check(cfg, cell, rule, algorithm, res, res_key, sharding, world, report, options)


def _gpu_job_check(cfg: RLMTConfig, cell: Cell, rule: str, algorithm: algorithms.Algorithm, res: Resources,
                   res_key: str, sharding: str, world: int, report: Report, options: "Options") -> None:
    """Memory per GPU (traced), vLLM's KV budget, wall time against the Slurm limit, disk and host memory."""
    from rlmt.algorithms.schedule import is_step
    from rlmt.preflight import gpu_job, judge_reward

    label = algorithm.name
    settings = _settings(cfg, cell, algorithm)
    if algorithm.job_shape is None:
        report.add(cell.name, "memory", WARNING, f"algorithms.{label}", f"{label}: no job shape registered: memory, "
                   "KV cache and runtime not checked")
        return
    mixture = cfg.mixtures[cell.mixture]
    if algorithm.trains_cell:
        n_prompts = mixture.n_train or 0
    else:
        n_prompts = (cfg.sft_data[cell.sft_data].n_prompts or 0) if cell.sft_data else 0
    shape = algorithm.job_shape(settings, world, n_prompts, mixture.n_val)
    gpus = gpu_job.load_gpus()
    gpu = gpus.get(cfg.preflight.gpu)
    if gpu is None:
        report.add(cell.name, "runtime", BLOCKER, "preflight.gpu", f"unknown GPU {cfg.preflight.gpu!r}; known: "
                   f"{sorted(gpus)} (rlmt/resources/gpu_facts.yaml)")
        return
    usable = gpu.usable_gib * gpu_job.GIB if res.gpu_mem_gb is None or res.gpu_mem_gb >= gpu.usable_gib \
        else res.gpu_mem_gb * GB
    sched = algorithm.schedule(settings, n_prompts) if algorithm.trains_cell and n_prompts else None
    reward = None
    classifiers = judge_reward.leaf_rewards(cell.rm, dict(cfg.reward_models), "classifier")  # a mix: its first
    if algorithm.reward_model_in_training and classifiers:
        rm = cfg.reward_models[classifiers[0]]
        if rm.source is not None:
            length = min(rm.max_length, shape.tokens_per_sequence)
            reward = (rm.source, max(1, rm.max_tokens_per_batch // length), length)
    checkpoints = getattr(settings, "checkpoints", None)
    limit = checkpoints.save_total_limit if checkpoints is not None else getattr(settings, "save_total_limit", None)
    saved = len(sched.saved_steps) if sched else max(1, (shape.updates_upper_bound or 1) // max(
        getattr(checkpoints, "save_steps", None) or getattr(settings, "save_steps", 1), 1))
    fixed = checkpoints is not None and is_step(checkpoints.select_step)
    b = gpu_job.budget(job=label, shape=shape, settings=settings, policy_source=cfg.models[cell.base].source,
                       reward=reward, sharding=sharding, world=world, gpus_per_node=max(res.gpus, 1), gpu=gpu,
                       usable=usable, preflight=cfg.preflight,
                       schedule_updates=sched.total_steps if sched else None,
                       schedule_rollouts=sched.rollouts if sched else None, saved_steps=saved,
                       save_total_limit=limit, select_is_fixed=fixed, runtime_min=res.runtime, mem_mb=res.mem_mb,
                       cache_dir=options.cache_dir, trace=options.trace)
    report.budgets.append((cell.name, b))
    for what in b.unchecked:
        report.add(cell.name, "memory", WARNING, f"{res_key}", f"{label}: {what}")
    if b.memory_parts:
        total, usable_gib = b.memory / gpu_job.GIB, b.usable / gpu_job.GIB
        limit = cfg.preflight.memory_limit_fraction * b.usable
        level = BLOCKER if b.memory > limit else WARNING if b.memory > WARN_FRACTION * limit else OK
        parts = ", ".join(f"{k} {v / gpu_job.GIB:.1f}" for k, v in b.memory_parts.items() if v >= 0.05 * gpu_job.GIB)
        report.add(cell.name, "memory", level, _memory_key(b, shape, label, res_key) if level != OK else
                   f"{res_key}.gpu_mem_gb", f"{label}: {total:.1f} of {usable_gib:.1f} GiB per GPU at the "
                   f"{b.memory_phase} peak ({parts}); limit {cfg.preflight.memory_limit_fraction:.0%}")
    if b.kv is not None:
        key = f"{shape.vllm.key}.vllm_max_model_length"
        if not b.kv.fits_one_request:
            report.add(cell.name, "vllm-kv", BLOCKER, key, f"{label}: {b.kv.describe()}")
        else:
            waves = b.kv.waves
            level = WARNING if b.kv.sequences_at_once < shape.rollout_sequences // 2 else OK
            report.add(cell.name, "vllm-kv", level, f"{shape.vllm.key}.vllm_gpu_memory_utilization",
                       f"{label}: {b.kv.describe()}" + (f" (up to {waves} waves of full-length sequences)"
                                                          if waves > 1 else ""))
    if b.estimate is not None and b.estimate.parts:
        hours = b.estimate.hours
        level = BLOCKER if hours > b.limit_hours else WARNING if hours > WARN_FRACTION * b.limit_hours else OK
        report.add(cell.name, "runtime", level, f"{res_key}.runtime",
                   f"{label}: ~{hours:.1f} h of {b.limit_hours:g} h ({b.estimate.describe()}; {gpu.name}, mfu "
                   f"{cfg.preflight.mfu:g}){'; ' + '; '.join(b.estimate.notes) if b.estimate.notes else ''}")
    if b.host_bytes:
        level = BLOCKER if b.host_bytes > b.host_limit else WARNING if b.host_bytes > WARN_FRACTION * b.host_limit \
            else OK
        report.add(cell.name, "host-memory", level, f"{res_key}.mem_mb",
                   f"{label}: ~{b.host_bytes / GB:.0f} of {b.host_limit / GB:.0f} GB host memory per node while the "
                   f"{max(res.gpus, 1)} ranks load their models")


def _memory_key(b, shape, label: str, res_key: str) -> str:
    """The setting that shrinks an over-budget job the most."""
    parts = b.memory_parts
    if "vLLM" in parts and shape.vllm is not None and not shape.vllm.sleeps:
        return f"{shape.vllm.key}.vllm_enable_sleep_mode"
    if b.memory_phase == "rollout_logprobs":
        return f"algorithms.{label}.logprob_chunk_tokens"
    if not shape.checkpointing and parts.get("activations", 0) >= max(parts.values()) * 0.5:
        return f"algorithms.{label}.gradient_checkpointing"
    return shape.memory_keys[0] if shape.memory_keys else f"{res_key}.gpu_mem_gb"


def _settings(cfg: RLMTConfig, cell: Cell, algorithm: algorithms.Algorithm):
    """The settings `algorithm` runs with for `cell`: SFT's overrides match the warm-start policy's axes alone."""
    if algorithm.trains_cell:
        return cfg.settings(algorithm.name, cell)
    return cfg.settings(algorithm.name, {"base": cell.base, "start": cell.start, "think": cell.think,
                                         "sft_data": cell.sft_data})


def _schedule_check(cfg: RLMTConfig, cell: Cell, report: Report) -> None:
    key = f"algorithms.{cell.algo}.checkpoints.select_step"
    problem = select_step_problem(cfg, cell)
    if problem:
        report.add(cell.name, "schedule", BLOCKER, key, problem.split(": ", 1)[1])
        return
    sched = training_schedule(cfg, cell)
    rule = cfg.settings(cell.algo, cell).checkpoints.select_step
    if sched is None:
        report.add(cell.name, "schedule", OK if not isinstance(rule, int) else WARNING, key,
                   f"select_step {rule!r}; the step count is known after the data ({cell.algo})")
    else:
        report.add(cell.name, "schedule", OK, key, f"select_step {rule!r} of {sched.total_steps} ({sched.detail}); "
                   f"saves {sched.saved_steps[0]}..{sched.saved_steps[-1]}")


def _remote_code_check(cfg: RLMTConfig, cell: Cell, report: Report, facts: dict[str, Any]) -> None:
    from rlmt.preflight import judge_reward

    classifiers = judge_reward.leaf_rewards(cell.rm, dict(cfg.reward_models), "classifier")  # a rubric has no model
    for kind, name, spec in (("models", cell.base, cfg.models[cell.base]),
                             *(("reward_models", rm, cfg.reward_models[rm]) for rm in classifiers)):
        entry = facts["models"].get(spec.source) or {}
        if entry.get("custom_code") and not spec.trust_remote_code:
            report.add(cell.name, "remote-code", BLOCKER, f"{kind}.{name}.trust_remote_code",
                       f"{spec.source} ships its own modelling code: set trust_remote_code: true for this model")


def _resources_check(cfg: RLMTConfig, report: Report) -> None:
    cluster = any(r.slurm_partition for r in cfg.resources.values())
    for name, res in cfg.resources.items():
        key = f"resources.{name}"
        for field_name in ("runtime", "mem_mb", "cpus_per_task"):
            if getattr(res, field_name) <= 0:
                report.add("(all)", "resources", BLOCKER, f"{key}.{field_name}", f"must be positive, got "
                           f"{getattr(res, field_name)}")
        if res.gpus > 0 and res.gpu_mem_gb is None:
            report.add("(all)", "resources", BLOCKER, f"{key}.gpu_mem_gb", f"{name} uses {res.gpus} GPU(s) per node "
                       "but does not say how much memory one has (the memory check needs it)")
        if cluster and not res.slurm_partition:
            report.add("(all)", "resources", BLOCKER, f"{key}.slurm_partition", f"{name} has no partition while others "
                       "do: its jobs would land on the cluster's default partition")
        if res.launcher == "accelerate" and not res.accelerate_config and max(res.gpus, 1) * res.nodes > 1:
            report.add("(all)", "resources", WARNING, f"{key}.accelerate_config", "no accelerate config: plain DDP")
    if cluster and not cfg.tracking.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):
        report.add("(all)", "tracking", WARNING, "tracking.tracking_uri",
                   "a Slurm config without an MLflow server: every job would write one SQLite file (mlruns.db) on the "
                   "shared filesystem, where concurrent writers lock each other out; set tracking.tracking_uri or "
                   "MLFLOW_TRACKING_URI to a server (`mlflow server` on a login node)")


DONE_TEXT = "preflight: no blockers\n"


def blocker_lines(report: Report) -> list[str]:
    """One line per blocker, naming the cell and the config key."""
    return [f"BLOCKER cell={f.cell} key={f.key}: {f.message}" for f in report.blockers]


class PreflightBlocked(RuntimeError):
    """The config has blockers: nothing may start (the message lists them)."""


def gate(config: str | Path, done: str | Path, *, root: str | Path | None = None,
         log: str | Path | None = None, trace: bool | None = None, cache_dir: str | Path | None = None) -> Report:
    """Check `config`; with no blocker, write the marker `done` (the same text every time, rewritten only when
    absent or different, so it never makes a job rerun); with blockers, remove it and raise PreflightBlocked.
    `log` receives the report's budget table, its findings and its blockers."""
    report = run(config, root=root, trace=trace, cache_dir=cache_dir)
    lines = blocker_lines(report)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text((report.budget_table() + "\n\n" if report.budgets else "") + report.table() + "\n"
                             + "".join(line + "\n" for line in lines))
    if report.blockers:
        Path(done).unlink(missing_ok=True)
        raise PreflightBlocked(f"rlmt preflight: {len(lines)} blocker(s) in {config}, nothing started:\n"
                               + "\n".join(lines))
    replace_if_changed(done, DONE_TEXT)
    return report


@dataclass(frozen=True)
class Options:
    """How much the preflight measures: `trace` the GPU jobs on fake tensors (cached in `cache_dir`)."""

    trace: bool = True
    cache_dir: Path = Path("results/.rlmt/preflight-cache")


def run(config: str | Path, *, root: str | Path | None = None, trace: bool | None = None,
        cache_dir: str | Path | None = None) -> Report:
    """Check every cell of the config at `config`; relative paths (accelerate configs) resolve against `root`
    (default: the workflow's source tree, as the launcher resolves them). `trace`: trace GPU jobs (None: the
    config's preflight.trace); `cache_dir`: where traces are cached (None: $RLMT_PREFLIGHT_CACHE, else the config's
    preflight.cache_dir)."""
    from rlmt.config import data_dir
    from rlmt.preflight import judge_reward

    report = Report()
    config = Path(config)
    root = Path(root) if root else SOURCE_ROOT
    try:
        raw = yaml.safe_load(config.read_text()) or {}
        cfg = parse_config(raw, check_schedules=False)
    except (OSError, yaml.YAMLError, ConfigError) as err:
        report.add("(config)", "config", BLOCKER, str(config), str(err).replace("\n", " "))
        return report
    facts = load_facts()
    cache_dir = cache_dir or os.environ.get("RLMT_PREFLIGHT_CACHE") or cfg.preflight.cache_dir
    options = Options(trace=cfg.preflight.trace if trace is None else trace, cache_dir=Path(cache_dir))
    _resources_check(cfg, report)
    for cell in cfg.cells():
        report.cells.append(cell.name)
        if cell.start == "warm-start":
            _template_check(cfg, cell, report, facts)
            _launcher_check(cfg, cell, "sft", "sft", report, root, options)
        _launcher_check(cfg, cell, "train", cell.algo, report, root, options)
        judge_reward.check_cell(cfg, cell, report)  # after the job's runtime estimate: the judge's time adds to it
        _schedule_check(cfg, cell, report)
        _remote_code_check(cfg, cell, report, facts)
    _disk_check(cfg, report)
    judge_reward.check_sources(cfg, cfg.cells(), report, data_dir(cfg))
    return report


def _disk_check(cfg: RLMTConfig, report: Report) -> None:
    """The grid's checkpoints against preflight.disk_quota_gb: an unlimited cell is the key to change."""
    seen: dict[tuple[str, str], float] = {}
    policies: dict[str, str] = {}  # one SFT job per warm-start policy, however many cells start from it
    for cell, b in report.budgets:
        if b.disk is None:
            continue
        if b.job == "sft":
            policy = cfg.cell(cell).policy_name
            if policy in policies:
                continue
            policies[policy] = cell
        seen[(cell, b.job)] = b.disk.total
    total = sum(seen.values())
    quota = cfg.preflight.disk_quota_gb
    if not seen:
        return
    if quota is None:
        report.add("(all)", "disk", OK, "preflight.disk_quota_gb", f"checkpoints at their peak: ~{total / 1e12:.1f} TB "
                   "over the grid (no quota set)")
        return
    if total <= quota * GB:
        report.add("(all)", "disk", OK, "preflight.disk_quota_gb", f"~{total / 1e12:.1f} of {quota / 1e3:g} TB")
        return
    unlimited = [(cell, job) for (cell, job) in seen if _save_limit(cfg, cell, job) is None]
    for cell, job in unlimited:
        report.add(cell, "disk", BLOCKER, f"algorithms.{job}.checkpoints.save_total_limit",
                   f"{job} keeps every checkpoint (~{seen[(cell, job)] / 1e12:.2f} TB); the grid needs ~{total / 1e12:.1f}"
                   f" TB of a {quota / 1e3:g} TB quota")
    if not unlimited:
        report.add("(all)", "disk", BLOCKER, "preflight.disk_quota_gb", f"checkpoints need ~{total / 1e12:.1f} TB of a "
                   f"{quota / 1e3:g} TB quota")


def _save_limit(cfg: RLMTConfig, cell_name: str, job: str) -> int | None:
    settings = _settings(cfg, cfg.cell(cell_name), algorithms.get(job))
    checkpoints = getattr(settings, "checkpoints", None)
    return checkpoints.save_total_limit if checkpoints is not None else settings.save_total_limit
