"""The ``rubric`` reward kind: an LLM judge grades each answer against its prompt's own criteria.

An extension beyond the paper (which rewards with a Bradley-Terry classifier): per prompt, a rubric (a list
of weighted criteria, :class:`rlmt.judges.rubric_prompts.Criterion`) comes from

- ``rubrics: {column: <name>}``: the prompt rows' own column (the public rubric and checklist sets publish
  one); with ``path`` the ``rubrics`` stage reads that file's rows (prompt + column) into the rubric file,
  since a curated mixture keeps only ``id``, ``messages`` and ``source``;
- ``rubrics: {generate: {<teacher endpoint>}}``: written once per prompt by a teacher endpoint in the
  ``rubrics`` stage (:mod:`rlmt.data.rubrics`: cached, resumable, malformed replies quarantined).

At training time a judge (any OpenAI-compatible endpoint, through :mod:`rlmt.judges.client`: a persistent
cache keyed by judge model, messages and parameters, so the prompt, the criteria and the answer; retries;
bounded concurrency) grades each answer, ``mode: explicit`` (a verdict per criterion, aggregated by weight)
or ``mode: implicit`` (one holistic 1-10 score given the rubric). A resumed step re-asks nothing.

A judge's failure is never a silent 0. Transport failures (timeouts, 429, 5xx, malformed bodies) are retried
by the client; an unreadable reply is asked again with the reason (``max_parse_tries`` asks in all). What
still fails, an answer whose prompt has no rubric included, is counted (``judge_failed``,
``judge_unparsed``, ``rubric_missing``) and scored by ``on_failure``:

- ``neutral`` (default): the mean reward of the batch's judged answers to the same prompt (no advantage in
  GRPO's group), else of the batch's judged answers, else 0.5 (the middle of the [0, 1] scale);
- ``lowest``: 0.0;
- ``raise``: the step stops with :class:`RubricRewardError`.

More than ``max_failed_fraction`` of a batch failed stops the step whatever the rule: a judge that is down
must not train a policy on filler rewards. An empty answer (or strict's ``[NULL]``) scores 0.0 without a
judge call (counted ``answer_empty``). Each distinct (prompt, criteria, answer) is judged once per batch, so
equal answers get equal rewards, and a second scoring of the same batch is answered from the cache: the same
floats, no request.

Imports nothing heavy at module level (``rlmt.config`` imports the registry through this module).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from pydantic import Field, model_validator

from rlmt.algorithms.settings import Strict
from rlmt.rewards.base import AnswerItem, AnswerReward, Scored
from rlmt.rewards.registry import BuildContext, RewardKind
from rlmt.thinking import NULL_ANSWER, ThinkingFormat

log = logging.getLogger(__name__)

FAILURE_RULES = ("neutral", "lowest", "raise")
NEUTRAL_FALLBACK = 0.5  # the middle of the [0, 1] scale, when nothing in the batch was judged
JUDGE_CACHE_FILE = "rubric-judge.sqlite"


class RubricRewardError(RuntimeError):
    """A rubric reward that cannot score a batch (judge down, failure rule ``raise``, no rubric file)."""


# ------------------------------------------------------------------ config


class RubricJudgeSpec(Strict):
    """The judge endpoint (OpenAI-compatible ``/chat/completions``: OpenAI, a vLLM server, a proxy)."""

    base_url: str = Field(description="e.g. https://api.openai.com/v1, or http://<node>:8000/v1 for a vLLM server.")
    model: str
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Environment variable holding the key "
                                    "(never the key itself); null for a server without one.")
    concurrency: int = Field(default=8, ge=1, description="Requests in flight per training process.")
    max_retries: int = Field(default=6, ge=0, description="HTTP retries per request (timeouts, 429, 5xx, malformed bodies).")
    timeout_s: float = Field(default=120.0, gt=0)
    backoff_s: float = Field(default=1.0, ge=0, description="First retry delay; doubles per retry (with jitter).")
    max_backoff_s: float = Field(default=60.0, ge=0)
    temperature: float = Field(default=0.0, ge=0, description="0: the same answer gets the same grade.")
    max_tokens: int = Field(default=1024, ge=1, description="Reply budget of one judge call.")
    price_input_per_mtok: float | None = Field(default=None, description="USD per 1M prompt tokens (None: the "
                                               "built-in table of rlmt.judges.cost; unknown models: no cost).")
    price_output_per_mtok: float | None = None
    seconds_per_call: float = Field(default=10.0, gt=0, description="Assumed wall time of one call, for "
                                    "rlmt preflight's judge-time estimate (measure yours: rlmt logs it).")
    cache_path: str = Field(default="results/judges/rubric-judge.sqlite", description="Reply cache when the job "
                            "names no cache dir.")


class RubricTeacherSpec(Strict):
    """The endpoint that writes a rubric once per prompt (the ``rubrics`` stage)."""

    base_url: str
    model: str
    api_key_env: str | None = Field(default="OPENAI_API_KEY", description="Environment variable holding the key.")
    temperature: float = 0.0
    max_tokens: int = Field(default=2048, ge=1)
    max_tries: int = Field(default=3, ge=1, description="Asks per prompt in all; a malformed rubric is asked again "
                           "with the reason.")
    concurrency: int = Field(default=16, ge=1)
    timeout_s: float = 300.0
    max_retries: int = Field(default=6, ge=0, description="HTTP retries per request (429, 5xx, timeouts, malformed bodies).")
    backoff_s: float = Field(default=1.0, ge=0)
    min_criteria: int = Field(default=3, ge=1)
    max_criteria: int = Field(default=12, ge=1)
    price_input_per_mtok: float | None = None
    price_output_per_mtok: float | None = None


class RubricSourceSpec(Strict):
    """Where each prompt's rubric comes from: a column of the prompt rows, or a teacher: exactly one."""

    column: str | None = Field(default=None, description="The column holding each row's rubric (a list of "
                               "criteria: strings, or objects with a text and a weight; or their JSON).")
    path: str | None = Field(default=None, description="With `column`: a JSONL/parquet of prompt rows "
                             "(`messages` or `prompt`) with that column, e.g. a public rubric set; "
                             "'{data_dir}' expands. Without it the rubric must reach the reward as the "
                             "training row's column.")
    generate: RubricTeacherSpec | None = Field(default=None, description="Write one rubric per prompt with this "
                                               "teacher (the `rubrics` stage).")

    @model_validator(mode="after")
    def _one_source(self) -> "RubricSourceSpec":
        if (self.column is None) == (self.generate is None):
            raise ValueError("rubrics: give exactly one of 'column' (a dataset column) or 'generate' (a teacher)")
        if self.path is not None and self.column is None:
            raise ValueError("rubrics.path: only with 'column' (the file whose column holds the rubrics)")
        return self

    @property
    def has_file(self) -> bool:
        """Whether the ``rubrics`` stage makes a rubric file for this source."""
        return self.generate is not None or self.path is not None


class RubricEstimate(Strict):
    """What rlmt preflight assumes of a rubric where the config cannot say (tokens are upper-bounded elsewhere)."""

    rubric_tokens: int = Field(default=400, ge=0, description="Tokens of one rendered rubric.")
    reply_tokens: int | None = Field(default=None, ge=1, description="Tokens of one judge reply (None: judge.max_tokens).")


class RubricRewardSpec(Strict):
    """``reward_models.<name>`` for a rubric reward (``kind: rubric``)."""

    kind: Literal["rubric"]
    judge: RubricJudgeSpec
    mode: Literal["explicit", "implicit"] = Field(default="explicit", description="explicit: a verdict per "
                                                  "criterion, aggregated by weight; implicit: one holistic 1-10 score "
                                                  "given the rubric.")
    rubrics: RubricSourceSpec
    on_failure: Literal["neutral", "lowest", "raise"] = Field(
        default="neutral", description="Score of an answer the judge could not grade (after retries): neutral = the "
        "mean of the judged answers to its prompt in the batch; lowest = 0; raise = stop.")
    max_parse_tries: int = Field(default=3, ge=1, description="Asks per answer in all when replies cannot be read.")
    max_failed_fraction: float = Field(default=0.25, ge=0, le=1, description="A batch with more failed answers "
                                       "than this stops the step.")
    estimate: RubricEstimate = Field(default_factory=RubricEstimate)

    def describe(self, name: str, results_root: str | Path = "results") -> str:
        """One line for the report: judge, mode and where the rubrics come from."""
        source = (f"written by {self.rubrics.generate.model}" if self.rubrics.generate is not None
                  else f"column `{self.rubrics.column}`")
        return f"rubric judge {self.judge.model} ({self.mode}), rubrics {source}"

    def api_key_envs(self) -> list[str]:
        """The environment variables holding the keys this reward's jobs send (judge, rubric teacher)."""
        names = [self.judge.api_key_env]
        if self.rubrics.generate is not None:
            names.append(self.rubrics.generate.api_key_env)
        return [n for n in names if n]


# ------------------------------------------------------------------ the reward


@dataclass
class _Ask:
    """One distinct judge conversation of a batch and the items it grades."""

    messages: list[dict]
    criteria: list
    items: list[int] = field(default_factory=list)
    value: float | None = None
    failure: str | None = None


class RubricReward(AnswerReward):
    """Grades extracted answers against their prompts' rubrics with a judge (see the module docstring).

    Args:
        fmt, strict: as :class:`AnswerReward`.
        judge: an :mod:`rlmt.judges.client` judge (``complete_many`` over ``JudgePrompt``, ``usage``).
        mode: ``explicit`` or ``implicit``.
        rubrics: prompt key (:func:`rlmt.data.rubrics.prompt_key`) -> criteria, from the rubric file.
        column: the row column that holds a rubric (read before `rubrics`).
    """

    kind = "rubric"

    def __init__(self, fmt: ThinkingFormat, judge, *, mode: str = "explicit",
                 rubrics: Mapping[str, list] | None = None, column: str | None = None, strict: bool = False,
                 on_failure: str = "neutral", max_parse_tries: int = 3, max_failed_fraction: float = 0.25,
                 max_tokens: int = 1024, name: str = "rubric", on_close=None) -> None:
        super().__init__(fmt, strict=strict)
        if on_failure not in FAILURE_RULES:
            raise ValueError(f"on_failure {on_failure!r}; allowed: {list(FAILURE_RULES)}")
        self.judge = judge
        self.mode = mode
        self.rubrics = dict(rubrics or {})
        self.column = column
        self.on_failure = on_failure
        self.max_parse_tries = max_parse_tries
        self.max_failed_fraction = max_failed_fraction
        self.max_tokens = max_tokens
        self.name = name
        self._on_close = on_close

    def criteria_for(self, item: AnswerItem) -> list | str:
        """The item's criteria, or why it has none (``rubric_missing``, or the column's problem)."""
        from rlmt.data.rubrics import prompt_key
        from rlmt.judges.rubric_prompts import read_criteria

        if self.column is not None and item.extras.get(self.column) is not None:
            return read_criteria(item.extras[self.column])
        found = self.rubrics.get(prompt_key(item.prompt))
        return found if found is not None else "rubric_missing"

    def score_answers(self, items: Sequence[AnswerItem], *, progress: bool = False) -> Scored:
        from rlmt.judges.rubric_prompts import judge_messages

        counts: Counter[str] = Counter()
        scores: list[float | None] = [None] * len(items)
        inputs = [""] * len(items)
        failed: dict[int, str] = {}
        asks: dict[str, _Ask] = {}
        for i, item in enumerate(items):
            criteria = self.criteria_for(item)
            if isinstance(criteria, str):
                failed[i] = "rubric_missing" if criteria == "rubric_missing" else "rubric_invalid"
                continue
            if not item.answer.strip() or item.answer == NULL_ANSWER:
                scores[i] = 0.0
                counts["answer_empty"] += 1
                continue
            messages = judge_messages(self.mode, item.prompt, item.answer, criteria)
            inputs[i] = messages[-1]["content"]
            ask = asks.setdefault(json.dumps(messages, sort_keys=True, ensure_ascii=False), _Ask(messages, criteria))
            ask.items.append(i)

        before = _usage(self.judge)
        self._ask(list(asks.values()), counts, progress)
        after = _usage(self.judge)
        counts["judge_requests"] += after[0] - before[0]
        counts["judge_cache_hits"] += after[1] - before[1]
        for ask in asks.values():
            for i in ask.items:
                if ask.value is None:
                    failed[i] = ask.failure or "judge_failed"
                else:
                    scores[i] = ask.value
                    counts["judge_scored"] += 1
        for reason in failed.values():
            counts[reason] += 1
        self._apply_failure_rule(items, scores, failed, counts)
        return Scored(scores=[float(s) for s in scores], counts=dict(counts), reward_inputs=inputs)

    def _ask(self, pending: list[_Ask], counts: Counter, progress: bool) -> None:
        """Judge every ask; an unreadable reply is asked again with the reason, up to max_parse_tries asks."""
        from rlmt.judges.client import JudgePrompt
        from rlmt.judges.rubric_prompts import parse_reply, repair_messages

        for attempt in range(1, self.max_parse_tries + 1):
            if not pending:
                return
            replies = self.judge.complete_many([JudgePrompt(a.messages, max_tokens=self.max_tokens) for a in pending],
                                               desc=f"{self.name} judge (ask {attempt})")
            retry = []
            for ask, reply in zip(pending, replies):
                if reply.text is None:  # the client's retries are spent
                    ask.failure = "judge_failed"
                    continue
                value = parse_reply(self.mode, reply.text, ask.criteria)
                if isinstance(value, str):
                    counts["judge_unparsed_replies"] += 1
                    if attempt < self.max_parse_tries:
                        ask.messages = repair_messages(ask.messages, reply.text, value)
                        retry.append(ask)
                    else:
                        ask.failure = "judge_unparsed"
                    continue
                ask.value = value
                if attempt > 1:
                    counts["judge_repaired"] += 1
            pending = retry

    def _apply_failure_rule(self, items: Sequence[AnswerItem], scores: list[float | None], failed: dict[int, str],
                            counts: Counter) -> None:
        if not failed:
            return
        summary = ", ".join(f"{k} {v}" for k, v in sorted(Counter(failed.values()).items()))
        if self.on_failure == "raise":
            raise RubricRewardError(f"reward {self.name!r}: {len(failed)} of {len(items)} answers not graded "
                                    f"({summary}); on_failure: raise")
        if len(failed) > self.max_failed_fraction * len(items):
            raise RubricRewardError(f"reward {self.name!r}: {len(failed)} of {len(items)} answers not graded "
                                    f"({summary}), more than max_failed_fraction {self.max_failed_fraction:g}: is the "
                                    "judge reachable?")
        counts["failure_scored"] += len(failed)
        log.warning("reward %s: %d of %d answers not graded (%s), scored by on_failure: %s", self.name, len(failed),
                    len(items), summary, self.on_failure)
        if self.on_failure == "lowest":
            for i in failed:
                scores[i] = 0.0
            return
        from rlmt.data.rubrics import prompt_key

        keys = [prompt_key(item.prompt) for item in items]
        judged = [i for i, s in enumerate(scores) if s is not None and i not in failed]
        batch_mean = sum(scores[i] for i in judged) / len(judged) if judged else NEUTRAL_FALLBACK
        for i in sorted(failed):
            same = [scores[j] for j in judged if keys[j] == keys[i]]
            scores[i] = sum(same) / len(same) if same else batch_mean

    def describe(self) -> dict[str, Any]:
        """Loggable settings (no credentials)."""
        return {"kind": self.kind, "mode": self.mode, "on_failure": self.on_failure,
                "max_parse_tries": self.max_parse_tries, "rubrics": len(self.rubrics), "column": self.column}

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _usage(judge) -> tuple[int, int]:
    usage = getattr(judge, "usage", None)
    return (int(getattr(usage, "requests_sent", 0)), int(getattr(usage, "cache_hits", 0)))


# ------------------------------------------------------------------ registry entry


def input_key(name: str) -> str:
    """The job input that carries reward `name`'s rubric file (it starts with the reward's name: a mix's parts'
    keys never collide)."""
    return f"{name}.rubrics"


def rubric_file(name: str) -> str:
    """Reward `name`'s rubric file, relative to the results directory (the ``rubrics`` stage's output)."""
    return f"data/rubrics/{name}/rubrics.jsonl"


def inputs(name: str, spec: RubricRewardSpec, specs: Mapping[str, Any]) -> dict[str, str]:
    """The rubric file, for a source the ``rubrics`` stage makes one for (a teacher, or a column's file)."""
    return {input_key(name): rubric_file(name)} if spec.rubrics.has_file else {}


def build(name: str, spec: RubricRewardSpec, context: BuildContext) -> RubricReward:
    """The reward: the judge client on its cache (``context.cache_dir``), the rubric file when there is one."""
    from rlmt.data.rubrics import load_rubric_file
    from rlmt.judges.cache import JudgeCache
    from rlmt.judges.client import HTTPJudge
    from rlmt.judges.cost import price_for

    rubrics = None
    if spec.rubrics.has_file:
        path = context.inputs.get(input_key(name))
        if path is None:
            raise RubricRewardError(f"reward_models.{name}: no rubric file among the job's inputs "
                                    f"({input_key(name)}: results/{rubric_file(name)}; `rlmt data rubrics` makes it)")
        rubrics = load_rubric_file(path)
    j = spec.judge
    cache = JudgeCache(Path(context.cache_dir) / JUDGE_CACHE_FILE if context.cache_dir else j.cache_path)
    judge = HTTPJudge(j.base_url, j.model, cache, api_key_env=j.api_key_env, concurrency=j.concurrency,
                      max_retries=j.max_retries, timeout_s=j.timeout_s, temperature=j.temperature,
                      max_tokens=j.max_tokens, backoff_s=j.backoff_s, max_backoff_s=j.max_backoff_s,
                      price=price_for(j.model, j.price_input_per_mtok, j.price_output_per_mtok))
    return RubricReward(context.fmt, judge, mode=spec.mode, rubrics=rubrics, column=spec.rubrics.column,
                        strict=context.strict, on_failure=spec.on_failure, max_parse_tries=spec.max_parse_tries,
                        max_failed_fraction=spec.max_failed_fraction, max_tokens=j.max_tokens, name=name,
                        on_close=cache.close)


# Registered by rlmt.rewards (its BUILTIN_KINDS), like every built-in kind.
KIND = RewardKind(name="rubric", spec=RubricRewardSpec, build=build, inputs=inputs,
                  doc="An LLM judge grades each answer against its prompt's weighted criteria "
                      "(explicit per-criterion verdicts or one implicit score).")
