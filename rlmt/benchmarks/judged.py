"""The part every LLM-judged benchmark shares: build judge prompts, send them through a judge,
parse and record every reply, then aggregate.

A judged benchmark implements :meth:`JudgedBenchmark.tasks` (the judge calls for one protocol)
and :meth:`JudgedBenchmark.aggregate` (judgments -> :class:`BenchmarkResult`). ``score`` runs one
protocol ("paper": the reference code's; "official": the benchmark's own tool), or both, in which
case each metric is reported twice, named ``paper.<metric>`` and ``official.<metric>``.

Two kinds of failure are kept apart and both counted:

* a *generation* failure (no answer: the thought never ended, or no row) is scored as the
  worst outcome and counted in ``n_failed`` -- a model that never answers gets no free pass;
* a *judge* failure (the endpoint gave up, or the reply did not parse) leaves the item
  unscored: it is counted (``extra.judge_failures``) and left out of the mean, never turned into a
  loss (the reference code scored WildBench parse failures as -100).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from rlmt.benchmarks.base import Benchmark, BenchmarkError, BenchmarkResult, Item, answer_of
from rlmt.judges.client import JudgePrompt


@dataclass
class JudgeTask:
    """One judge call for one item (``game`` tells the calls of one item apart, e.g. swapped orders)."""

    id: str
    game: str
    prompt: JudgePrompt
    parser: Callable[[str | None], Any]
    meta: dict = field(default_factory=dict)


class JudgedBenchmark(Benchmark):
    """Base of the judged benchmarks; see the module docstring."""

    protocols: ClassVar[tuple[str, ...]] = ("paper", "official")

    def resolve_protocols(self, protocol: str | None) -> list[str]:
        protocol = protocol or self.options.get("protocol") or "paper"
        if protocol == "both":
            return list(self.protocols)
        if protocol not in ("paper", "official"):
            raise BenchmarkError(f"{self.name}: unknown protocol {protocol!r}; allowed: paper, official, both")
        return [protocol] if protocol in self.protocols else [self.protocols[0]]

    # -------------------------------------------------------------- to implement

    def tasks(self, items: list[Item], generations: dict[str, dict], protocol: str) -> list[JudgeTask]:
        raise NotImplementedError

    def aggregate(self, items: list[Item], generations: dict[str, dict], judgments: dict[str, list[dict]],
                  protocol: str) -> BenchmarkResult:
        raise NotImplementedError

    # -------------------------------------------------------------- shared

    def order_rng(self, item_id: str, protocol: str) -> random.Random:
        """A per-item RNG (seeded by the item id), so the random A/B order survives reruns and subsets."""
        return random.Random(f"{self.options.get('seed', 0)}:{self.name}:{protocol}:{item_id}")

    def judge_all(self, items: list[Item], generations: dict[str, dict], judge, protocol: str | None = None
                  ) -> tuple[BenchmarkResult, list[dict]]:
        """Judge every answered item under the chosen protocol(s); return the result and the judgment rows."""
        results: dict[str, BenchmarkResult] = {}
        rows: list[dict] = []
        for proto in self.resolve_protocols(protocol):
            tasks = self.tasks(items, generations, proto)
            replies = judge.complete_many([t.prompt for t in tasks], desc=f"{self.name}/{proto}")
            by_item: dict[str, list[dict]] = defaultdict(list)
            for task, reply in zip(tasks, replies):
                parsed = task.parser(reply.text) if reply.text is not None else None
                row = {"id": task.id, "game": task.game, "protocol": proto, "judge": judge.model, "key": reply.key,
                       "raw": reply.text, "parsed": parsed, "ok": parsed is not None,
                       "error": reply.error or (None if parsed is not None else "unparsed judge reply"),
                       "cached": reply.cached, **task.meta}
                rows.append(row)
                by_item[task.id].append(row)
            results[proto] = self.aggregate(items, generations, by_item, proto)
        return _merge(results), rows

    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        """Judge and aggregate; needs ``judge=`` (see :func:`rlmt.benchmarks.judging.judge_benchmark`)."""
        judge = ctx.get("judge")
        if judge is None:
            raise BenchmarkError(f"{self.name} is judged by an LLM: pass judge=..., or run `rlmt eval judge`")
        result, _ = self.judge_all(items, generations, judge, ctx.get("protocol"))
        return result


def answered(items: list[Item], generations: dict[str, dict]) -> list[tuple[Item, str]]:
    """The items that have an answer to judge, with that answer."""
    out = []
    for item in items:
        answer = answer_of(generations.get(item.id))
        if answer is not None:
            out.append((item, answer))
    return out


def count_failures(items: list[Item], generations: dict[str, dict], judgments: dict[str, list[dict]]) -> dict:
    """Generation failures, judge failures (items whose every judgment failed) and failed calls."""
    gen_failed = sum(1 for it in items if answer_of(generations.get(it.id)) is None)
    calls_failed = sum(1 for rows in judgments.values() for r in rows if not r["ok"])
    items_failed = sum(1 for rows in judgments.values() if rows and not any(r["ok"] for r in rows))
    return {"generation_failures": gen_failed, "judge_failures": items_failed, "judge_calls_failed": calls_failed}


def _merge(results: dict[str, BenchmarkResult]) -> BenchmarkResult:
    if len(results) == 1:
        return next(iter(results.values()))
    first = next(iter(results.values()))
    metrics, per_item, extra = {}, [], {}
    for proto, res in results.items():
        metrics.update({f"{proto}.{k}": v for k, v in res.metrics.items()})
        extra[proto] = res.extra
        per_item.extend(res.per_item)
    if "paper.score" in metrics:  # the headline stays the paper protocol's number
        metrics = {"score": metrics["paper.score"], **metrics}
    return BenchmarkResult(benchmark=first.benchmark, metrics=metrics, n=first.n,
                           n_failed=max(r.n_failed for r in results.values()), per_item=per_item, protocol="both",
                           metric_version=first.metric_version, extra=extra)


def resolve_data_file(options: dict, data_dir: Path | None, key: str, default_rel: str, what: str) -> Path:
    """The benchmark file: ``options[key]`` if given, else ``data_dir/default_rel``; a clear error if absent."""
    if options.get(key):
        path = Path(str(options[key]).replace("{data_dir}", str(data_dir or "")))
    elif data_dir is not None:
        path = Path(data_dir) / default_rel
    else:
        raise BenchmarkError(f"{what}: no data_dir and no '{key}' option; set RLMT_DATA_DIR or "
                             f"evaluation.benchmarks.<name>.options.{key}")
    if not path.exists():
        raise BenchmarkError(f"{what}: {path} not found (`rlmt data fetch-benchmarks` downloads it)")
    return path
