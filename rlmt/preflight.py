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
memory         the per-GPU estimate exceeds the rule's ``gpu_mem_gb`` (warning above 90%)
resources      a rule's resources are incomplete (GPU jobs without gpu_mem_gb, a cluster config
               where some rule has no partition, non-positive runtime/memory/CPUs)
=============  ==================================================================================

The memory model (per GPU, bytes; P = parameters, N = processes of the job):

- trained model states: DeepSpeed ZeRO with bf16 keeps bf16 weights and gradients and fp32
  master weights + Adam moments (2P + 2P + 12P): ZeRO-2 shards the last two, ZeRO-3 all three;
  a TRL trainer under DDP holds bf16 weights, gradients and AdamW moments (8P); rlmt's PPO holds
  fp32 weights, gradients and moments (16P) per model, sharded by FSDP2;
- reference model (GRPO with beta > 0, DPO): bf16 weights (2P), sharded under ZeRO-3/FSDP;
- reward model (GRPO, PPO): bf16 weights on every rank (2P_rm), never sharded;
- critic (PPO): as the actor;
- vLLM (GRPO): ``rollout.vllm_gpu_memory_utilization`` of the GPU, colocated;
- activations of one micro-batch of T tokens (Korthikanti et al. 2022): 34·T·h bytes per layer
  without recomputation; with gradient checkpointing 2·T·h per layer plus one layer's 34·T·h;
- logits: the positions a loss reads, x vocabulary, x 6 bytes (bf16 logits and an fp32 copy).

In the workflow the check is not a job: `gate` runs in the Snakemake process while it reads the Snakefile,
before the DAG is built (and in a dry run), and writes ``results/.rlmt/preflight.ok``, which every SFT and
training job takes as input. A blocker stops Snakemake before any job starts. Why not a rule: a job that must
rerun makes Snakemake force every job downstream of it, so a preflight rule rerun by any config edit reran
every SFT and training job; taken as ``ancient()`` instead, those jobs were never re-examined at all, so a
changed training setting reran nothing. The marker's text never changes, so it never makes a job rerun.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlmt.config import Cell, ConfigError, RLMTConfig, Resources, parse_config, select_step_problem, training_schedule
from rlmt.files import replace_if_changed
from rlmt.launch import SOURCE_ROOT, accelerate_config_files

GB = 1e9
WARN_FRACTION = 0.9
BLOCKER, WARNING, OK = "BLOCKER", "warning", "ok"

# Launchers and sharding each algorithm's trainer runs under ("single": one process, no launcher).
SUPPORTED = {
    "sft": {"single", "ddp", "zero2", "zero3", "fsdp"},
    "grpo": {"single", "ddp", "zero2", "zero3", "fsdp"},
    "dpo": {"single", "ddp", "zero2", "zero3", "fsdp"},
    "ppo": {"single", "ddp", "fsdp2"},  # rlmt's own loop: plain torch semantics under FSDP2, no DeepSpeed engine
}


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


def _supported(algo: str, sharding: str) -> bool:
    allowed = SUPPORTED[algo]
    return sharding in allowed or (sharding == "fsdp2" and "fsdp" in allowed)


# ----------------------------------------------------------------------------- memory


def memory_estimate(cfg: RLMTConfig, cell: Cell, algo: str, sharding: str, world: int, gpu_mem_gb: float | None,
                    facts: dict[str, Any]) -> dict[str, float] | None:
    """Per-GPU bytes by component (see the module docstring), or None if the model shapes are unknown."""
    policy = model_shape(cfg.models[cell.base].source, facts)
    if policy is None:
        return None
    p, n = policy.params, max(world, 1)
    s = cfg.settings(algo, cell if algo != "sft" else {"base": cell.base, "start": cell.start, "think": cell.think,
                                                        "sft_data": cell.sft_data})
    sharded = sharding in ("zero3", "fsdp", "fsdp2")
    if algo == "ppo":
        states = 16 * p / (n if sharded else 1)
    elif sharding in ("zero2", "zero3"):
        states = 2 * p / (n if sharding == "zero3" else 1) + 14 * p / n
    else:
        states = 8 * p / (n if sharded else 1)
    est = {"weights+grads+optimizer": states}
    if (algo == "grpo" and s.beta > 0) or algo == "dpo":
        est["reference model"] = 2 * p / (n if sharded else 1)
    if algo == "ppo" and s.kl_coef > 0:
        est["reference model"] = 4 * p
    if algo in ("grpo", "ppo"):
        rm_source = cfg.reward_models[cell.rm].source  # None: trained by the pipeline, shape unknown before it runs
        rm = model_shape(rm_source, facts) if rm_source else None
        if rm is not None:
            est["reward model"] = 2 * rm.params
    if algo == "ppo":
        est["critic"] = states
    if algo == "grpo" and s.rollout.use_vllm is not False and gpu_mem_gb:
        est["vLLM share"] = s.rollout.vllm_gpu_memory_utilization * gpu_mem_gb * GB
    h, layers, vocab = policy.hidden, policy.layers, policy.vocab
    if algo == "grpo":
        seqs, per_seq = s.per_device_train_batch_size, s.rollout.max_prompt_length + s.rollout.max_completion_length
        loss_positions, ckpt = seqs * s.rollout.max_completion_length, s.gradient_checkpointing
    elif algo == "ppo":
        seqs = min(s.micro_batch_size, max(s.mini_batch_size // n, 1))
        per_seq = s.rollout.max_prompt_length + s.rollout.max_completion_length
        loss_positions, ckpt = seqs * per_seq, False
    elif algo == "dpo":
        seqs, per_seq = 2 * s.per_device_train_batch_size, s.max_length
        loss_positions, ckpt = seqs * per_seq, False
    else:
        seqs, per_seq = s.per_device_train_batch_size, s.max_length
        loss_positions, ckpt = seqs * per_seq, s.gradient_checkpointing
    tokens = seqs * per_seq
    est["activations"] = (2 * tokens * h * layers + 34 * tokens * h) if ckpt else 34 * tokens * h * layers
    est["logits"] = 6 * loss_positions * vocab
    return est


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
                    facts: dict[str, Any]) -> None:
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
    if not _supported(algo, sharding):
        report.add(cell.name, "launcher", BLOCKER, f"{res_key}.accelerate_config",
                   f"{label} does not run under {sharding} ({res.accelerate_config}); supported: {sorted(SUPPORTED[algo])}")
        return
    world = max(res.gpus, 1) * res.nodes
    geometry = _geometry_problem(cfg, cell, algo, world)
    if geometry:
        report.add(cell.name, "launcher", BLOCKER, geometry[0], f"{label} on {world} processes: {geometry[1]}")
        return
    report.add(cell.name, "launcher", OK, f"{res_key}.accelerate_config", f"{label}: {sharding} on {world} process(es)")
    if res.gpus > 0 and res.gpu_mem_gb:
        est = memory_estimate(cfg, cell, algo, sharding, world, res.gpu_mem_gb, facts)
        mkey = f"{res_key}.gpu_mem_gb"
        if est is None:
            report.add(cell.name, "memory", WARNING, mkey, f"{label}: model shapes unknown, memory not estimated")
            return
        total = sum(est.values()) / GB
        parts = ", ".join(f"{k} {v / GB:.1f}" for k, v in est.items())
        level = BLOCKER if total > res.gpu_mem_gb else WARNING if total > WARN_FRACTION * res.gpu_mem_gb else OK
        report.add(cell.name, "memory", level, mkey,
                   f"{label}: ~{total:.1f} of {res.gpu_mem_gb:g} GB per GPU ({parts})")


def _geometry_problem(cfg: RLMTConfig, cell: Cell, algo: str, world: int) -> tuple[str, str] | None:
    if algo == "sft":
        s = cfg.settings("sft", {"base": cell.base, "start": cell.start, "think": cell.think, "sft_data": cell.sft_data})
        if s.global_batch_size % (s.per_device_train_batch_size * world):
            return ("algorithms.sft.global_batch_size", f"{s.global_batch_size} is not divisible by "
                    f"per_device_train_batch_size {s.per_device_train_batch_size} x {world}")
        return None
    s = cfg.settings(algo, cell)
    if algo == "grpo":
        per_update = (s.prompts_per_update or s.prompts_per_step) * s.num_generations
        micro = min(s.per_device_train_batch_size, per_update) * world
        if per_update % micro:
            return ("algorithms.grpo.prompts_per_update", f"{per_update} completions per update are not divisible by "
                    f"per_device_train_batch_size x {world}")
        if (s.prompts_per_step * s.num_generations) % micro:
            return ("algorithms.grpo.prompts_per_step", f"{s.prompts_per_step * s.num_generations} completions per "
                    f"rollout are not divisible by per_device_train_batch_size x {world}")
    elif algo == "ppo":
        if s.prompts_per_step % world or s.mini_batch_size % world:
            return ("algorithms.ppo.mini_batch_size", f"prompts_per_step {s.prompts_per_step} and mini_batch_size "
                    f"{s.mini_batch_size} must be divisible by {world}")
    elif algo == "dpo":
        if s.global_batch_size % (s.per_device_train_batch_size * world):
            return ("algorithms.dpo.global_batch_size", f"{s.global_batch_size} is not divisible by "
                    f"per_device_train_batch_size {s.per_device_train_batch_size} x {world}")
    return None


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
    for kind, name, spec in (("models", cell.base, cfg.models[cell.base]),
                             ("reward_models", cell.rm, cfg.reward_models[cell.rm])):
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


DONE_TEXT = "preflight: no blockers\n"


def blocker_lines(report: Report) -> list[str]:
    """One line per blocker, naming the cell and the config key."""
    return [f"BLOCKER cell={f.cell} key={f.key}: {f.message}" for f in report.blockers]


class PreflightBlocked(RuntimeError):
    """The config has blockers: nothing may start (the message lists them)."""


def gate(config: str | Path, done: str | Path, *, root: str | Path | None = None,
         log: str | Path | None = None) -> Report:
    """Check `config`; with no blocker, write the marker `done` (the same text every time, rewritten only when
    absent or different, so it never makes a job rerun); with blockers, remove it and raise PreflightBlocked.
    `log` receives the report's table and its blockers."""
    report = run(config, root=root)
    lines = blocker_lines(report)
    if log is not None:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(report.table() + "\n" + "".join(line + "\n" for line in lines))
    if report.blockers:
        Path(done).unlink(missing_ok=True)
        raise PreflightBlocked(f"rlmt preflight: {len(lines)} blocker(s) in {config}, nothing started:\n"
                               + "\n".join(lines))
    replace_if_changed(done, DONE_TEXT)
    return report


def run(config: str | Path, *, root: str | Path | None = None) -> Report:
    """Check every cell of the config at `config`; relative paths (accelerate configs) resolve against `root`
    (default: the workflow's source tree, as the launcher resolves them)."""
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
    _resources_check(cfg, report)
    for cell in cfg.cells():
        report.cells.append(cell.name)
        if cell.start == "warm-start":
            _template_check(cfg, cell, report, facts)
            _launcher_check(cfg, cell, "sft", "sft", report, root, facts)
        _launcher_check(cfg, cell, "train", cell.algo, report, root, facts)
        _schedule_check(cfg, cell, report)
        _remote_code_check(cfg, cell, report, facts)
    return report
