"""The preflight's judge check: what a cell's rubric reward costs per step and per run, and what would stop it.

For every cell whose reward is a ``rubric`` (or a ``mix`` with rubric parts), from the config alone:

- **judge calls**: one per answer scored (identical answers of a batch share one; unreadable replies are asked
  again, which this does not count): per rollout ``rollout_sequences x world`` of the algorithm's job shape
  (GRPO: prompts_per_step x num_generations; PPO: prompts_per_step), per run x the schedule's rollouts, plus
  the validations (sequences x saved checkpoints) and DPO's pair sampling (n_prompts x samples_per_prompt);
- **tokens per call**: our judge template (~4 characters per token) + ``rollout.max_prompt_length`` +
  ``rollout.max_completion_length`` (the answer's upper bound) + ``estimate.rubric_tokens`` in, and
  ``estimate.reply_tokens`` (default: ``judge.max_tokens``) out;
- **judge time**: each process asks ``judge.concurrency`` at a time, ``judge.seconds_per_call`` each; the
  time adds to the job's own (the runtime estimate does not see the judge): over the rule's Slurm runtime is a
  blocker, over 90% a warning;
- **cost** (a priced judge: ``judge.price_*_per_mtok`` or rlmt.judges.cost's table) per step and per run; and
  once per generated rubric set, the teacher's calls and cost.

Blockers before any job starts: an endpoint that is not an http(s) URL; a key variable (``api_key_env``) that
is not set for a non-loopback endpoint (judge or rubric teacher); a rubric source that cannot reach the
reward (a column without ``path``: a curated mixture keeps only id, messages and source; a ``path`` that does
not exist, or uses ``{data_dir}`` with none set).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

CHARS_PER_TOKEN = 4  # the judge template's length in tokens, roughly (English prose)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


@dataclass(frozen=True)
class JudgeLoad:
    """One cell's judge work for one rubric reward."""

    reward: str
    step: str  # what one "step" is: a rollout (GRPO, PPO) or DPO's one sampling pass
    calls_per_step: int  # per rollout (GRPO/PPO); DPO: its one sampling pass
    calls_per_run: int
    prompt_tokens: int  # per call (upper bound)
    completion_tokens: int  # per call
    seconds_per_step: float
    hours_per_run: float
    usd_per_step: float | None
    usd_per_run: float | None

    def describe(self) -> str:
        cost = (f"; ${self.usd_per_step:,.2f}/step, ${self.usd_per_run:,.0f}/run" if self.usd_per_run is not None
                else "; cost unknown (no price for this judge: set judge.price_*_per_mtok)")
        return (f"{self.reward}: {self.calls_per_step:,} judge calls per {self.step}, {self.calls_per_run:,} per run; "
                f"<= {self.prompt_tokens:,} + {self.completion_tokens:,} tokens/call; "
                f"~{self.seconds_per_step / 60:.1f} min per {self.step}, ~{self.hours_per_run:.1f} h per run of judge "
                f"time{cost.replace('/step', f' per {self.step}').replace('/run', ' per run')}")


def leaf_rewards(name: str, specs: dict[str, Any], kind: str, seen: tuple[str, ...] = ()) -> list[str]:
    """The entries of `kind` that reward `name` uses: itself, or a mix's parts (recursively; each once)."""
    from rlmt.rewards import kind_of

    if name in seen or name not in specs:
        return []
    if kind_of(specs[name]) == kind:
        return [name]
    out: list[str] = []
    for part in getattr(specs[name], "parts", {}) or {}:
        out += [p for p in leaf_rewards(part, specs, kind, (*seen, name)) if p not in out]
    return out


def rubric_parts(name: str, specs: dict[str, Any]) -> list[str]:
    """The ``rubric`` entries reward `name` uses (itself, or a mix's rubric parts)."""
    return leaf_rewards(name, specs, "rubric")


def template_tokens(mode: str) -> int:
    """Tokens of our judge prompt around the conversation, answer and rubric (~4 characters per token)."""
    from rlmt.judges.rubric_prompts import judge_messages

    messages = judge_messages(mode, [{"role": "user", "content": ""}], "", [])
    return math.ceil(sum(len(m["content"]) for m in messages) / CHARS_PER_TOKEN)


def judge_load(name: str, spec: Any, algorithm: Any, settings: Any, world: int, n_prompts: int, n_val: int,
               ) -> JudgeLoad:
    """Calls, tokens, time and cost of reward `name` in one cell's training job (see the module docstring)."""
    from rlmt.judges.cost import price_for

    shape = algorithm.job_shape(settings, world, n_prompts, n_val)
    sched = algorithm.schedule(settings, n_prompts) if n_prompts else None
    rollouts = sched.rollouts if sched else 0
    validations = len(sched.saved_steps) if sched and shape.validation_sequences else 0
    per_rank_step = shape.rollout_sequences or shape.sampling_sequences
    rank_calls = shape.rollout_sequences * rollouts + shape.validation_sequences * validations + shape.sampling_sequences
    j = spec.judge
    rollout = getattr(settings, "rollout", None)
    prompt = template_tokens(spec.mode) + spec.estimate.rubric_tokens + (
        (rollout.max_prompt_length + rollout.max_completion_length) if rollout is not None else 0)
    completion = spec.estimate.reply_tokens or j.max_tokens
    seconds_step = math.ceil(per_rank_step / j.concurrency) * j.seconds_per_call
    hours = math.ceil(rank_calls / j.concurrency) * j.seconds_per_call / 3600
    price = price_for(j.model, j.price_input_per_mtok, j.price_output_per_mtok)
    per_call = (prompt * price[0] + completion * price[1]) / 1e6 if price else None
    return JudgeLoad(reward=name, step="rollout" if shape.rollout_sequences else "sampling pass",
                     calls_per_step=per_rank_step * world, calls_per_run=rank_calls * world,
                     prompt_tokens=prompt, completion_tokens=completion, seconds_per_step=seconds_step,
                     hours_per_run=hours, usd_per_step=per_call * per_rank_step * world if per_call is not None else None,
                     usd_per_run=per_call * rank_calls * world if per_call is not None else None)


def endpoint_problems(key: str, base_url: str, api_key_env: str | None) -> Iterable[tuple[str, str]]:
    """(config key, message) for an endpoint that cannot be called from here."""
    parsed = urlparse(base_url or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        yield f"{key}.base_url", f"{base_url!r} is not an http(s) URL of an OpenAI-compatible endpoint"
        return
    if api_key_env and not os.environ.get(api_key_env) and parsed.hostname not in LOOPBACK:
        yield f"{key}.api_key_env", (f"environment variable {api_key_env} is not set (the API key for {base_url}); "
                                     "export it where Snakemake runs")


def source_problems(name: str, spec: Any, data_dir: Path | None) -> Iterable[tuple[str, str]]:
    """(config key, message) for a rubric source that cannot reach the reward."""
    source = spec.rubrics
    key = f"reward_models.{name}.rubrics"
    if source.generate is not None:
        yield from endpoint_problems(f"{key}.generate", source.generate.base_url, source.generate.api_key_env)
        return
    if source.path is None:
        yield f"{key}.path", (f"column {source.column!r} without a path: a curated mixture keeps only id, messages "
                              "and source, so the column never reaches the reward; give the file that holds it")
        return
    path = source.path
    if "{data_dir}" in path:
        if data_dir is None:
            yield f"{key}.path", f"{path} uses {{data_dir}} but neither $RLMT_DATA_DIR nor data_dir is set"
            return
        path = path.replace("{data_dir}", str(data_dir))
    if not Path(path).is_file():
        yield f"{key}.path", f"rubric file not found: {path}"


def check_cell(cfg: Any, cell: Any, report: Any) -> None:
    """The cell's judge load (calls, tokens, time, cost) and its judge endpoints' blockers."""
    from rlmt import algorithms
    from rlmt.preflight import BLOCKER, OK, WARN_FRACTION, WARNING
    from rlmt.workflow import Plan

    names = rubric_parts(cell.rm, dict(cfg.reward_models))
    if not names:
        return
    algorithm = algorithms.get(cell.algo)
    settings = cfg.settings(cell.algo, cell)
    res = Plan(cfg).resources_of("train", cell.algo)
    world = max(res.gpus, 1) * res.nodes
    mixture = cfg.mixtures[cell.mixture]
    judge_hours = 0.0
    for name in names:
        spec = cfg.reward_models[name]
        for key, message in endpoint_problems(f"reward_models.{name}.judge", spec.judge.base_url,
                                              spec.judge.api_key_env):
            report.add(cell.name, "judge", BLOCKER, key, message)
        if algorithm.job_shape is None:
            report.add(cell.name, "judge", WARNING, f"reward_models.{name}.judge", f"{cell.algo}: no job shape: "
                       "judge calls not estimated")
            continue
        load = judge_load(name, spec, algorithm, settings, world, mixture.n_train or 0, mixture.n_val)
        judge_hours += load.hours_per_run
        report.add(cell.name, "judge", OK, f"reward_models.{name}.judge.concurrency", load.describe())
    limit = res.runtime / 60
    job_hours = next((b.estimate.hours for c, b in report.budgets if c == cell.name and b.job == cell.algo
                      and b.estimate is not None and b.estimate.parts), 0.0)
    total = job_hours + judge_hours
    if judge_hours and total > WARN_FRACTION * limit:
        level = BLOCKER if total > limit else WARNING
        report.add(cell.name, "judge", level, f"reward_models.{names[0]}.judge.concurrency",
                   f"{cell.algo}: ~{judge_hours:.1f} h of judge time on top of ~{job_hours:.1f} h of training: "
                   f"{total:.1f} h of a {limit:g} h runtime (raise the judge's concurrency, or the rule's runtime)")


def check_sources(cfg: Any, cells: Iterable[Any], report: Any, data_dir: Path | None) -> None:
    """Once per rubric reward the grid uses: its rubric source's blockers, and a teacher's calls and cost."""
    from rlmt.judges.cost import price_for
    from rlmt.preflight import BLOCKER, OK

    used: dict[str, set[str]] = {}
    for cell in cells:
        for name in rubric_parts(cell.rm, dict(cfg.reward_models)):
            used.setdefault(name, set()).add(cell.mixture)
    for name, mixtures in sorted(used.items()):
        spec = cfg.reward_models[name]
        problems = list(source_problems(name, spec, data_dir))
        for key, message in problems:
            report.add("(all)", "rubrics", BLOCKER, key, message)
        teacher = spec.rubrics.generate
        if problems or teacher is None:
            continue
        prompts = sum((cfg.mixtures[m].n_train or 0) + cfg.mixtures[m].n_val for m in mixtures)
        max_prompt = max((cfg.mixtures[m].filters.max_prompt_tokens or 1024) for m in mixtures)
        tokens_in = math.ceil(600 / CHARS_PER_TOKEN) + max_prompt
        price = price_for(teacher.model, teacher.price_input_per_mtok, teacher.price_output_per_mtok)
        cost = (f", <= ${prompts * (tokens_in * price[0] + teacher.max_tokens * price[1]) / 1e6:,.0f}" if price
                else ", cost unknown (no price for this teacher)")
        report.add("(all)", "rubrics", OK, f"reward_models.{name}.rubrics.generate",
                   f"{name}: one rubric per prompt of {sorted(mixtures)}: ~{prompts:,} teacher calls (once, cached), "
                   f"<= {tokens_in:,} + {teacher.max_tokens:,} tokens each{cost}")
