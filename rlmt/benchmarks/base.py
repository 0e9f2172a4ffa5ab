"""The benchmark protocol: load items -> (someone generates) -> score -> aggregate with a CI.

Every benchmark, rule-based or LLM-judged, is a :class:`Benchmark` subclass registered under the
name the config uses (``rlmt.config.KNOWN_BENCHMARKS``). Generation is not a benchmark's job: the
generation stage writes ``generations.jsonl`` rows (``id``, ``output``, ``answer``, ``thought``,
``answer_found``, ``well_formed``, ``finish_reason`` ...) and :meth:`Benchmark.score` reads them.

Two rules hold for every benchmark and live here so no benchmark re-implements them:

* thoughts are stripped by :func:`rlmt.thinking.extract` before anything is scored — a row's
  ``answer`` is already the extracted answer; :func:`answer_of` is the one accessor;
* an item whose thought never ended (``answer_found`` false) or that has no generation at all is
  *failed*: its score is ``None`` and it is counted in ``n_failed``, never scored on its thought.
  Failed items count as 0 in the headline metrics (a model that never answers does not get a free
  pass), and ``n_failed`` says how many there were.

By convention ``metrics["score"]`` is the benchmark's headline number (what the report's main
table shows); the other metrics are the protocol variants (strict/loose, full set, cell level...).
"""

from __future__ import annotations

import json
import math
import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from rlmt.jsonl import iter_json_lines
from rlmt.stats.bootstrap import bootstrap_ci  # noqa: F401  (re-exported: benchmarks import it from here)


@dataclass
class Item:
    """One benchmark question: the chat prompt and the gold fields the scorer needs."""

    id: str
    messages: list[dict]
    reference: dict[str, Any]


@dataclass
class ItemScore:
    """The score of one item; ``value`` None means failed/unscorable (counted in ``n_failed``)."""

    id: str
    value: float | None
    details: dict = field(default_factory=dict)


@dataclass
class Metric:
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass
class BenchmarkResult:
    benchmark: str
    metrics: dict[str, Metric]
    n: int
    n_failed: int
    per_item: list[ItemScore]
    protocol: str = "paper"
    metric_version: str = "1"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``scores.json`` document (per-item scores are not part of it)."""
        return {
            "benchmark": self.benchmark,
            "protocol": self.protocol,
            "metric_version": self.metric_version,
            "n": self.n,
            "n_failed": self.n_failed,
            "metrics": {name: asdict(m) for name, m in self.metrics.items()},
            "extra": self.extra,
        }


class BenchmarkError(ValueError):
    """Bad benchmark input: missing data files, unknown names, generations that do not match."""


class Benchmark(ABC):
    """A benchmark: ``load_items`` reads official data, ``score`` turns generations into metrics.

    ``thinking_sensitive`` says whether thoughts must be stripped (all benchmarks here: the paper
    scores answers only). ``options`` are the benchmark's settings from the config
    (``evaluation.benchmarks.<name>.options``) and are kept on ``self.options``.
    """

    name: ClassVar[str]
    metric_version: ClassVar[str] = "1"
    thinking_sensitive: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        self.options = dict(options)

    @abstractmethod
    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        """The benchmark's items, from ``data_dir`` (official formats); ``limit`` keeps the first N
        items of a seeded shuffle (so a small run is a fair sample, and reproducible)."""

    @abstractmethod
    def score(self, items: list[Item], generations: dict[str, dict], **ctx: Any) -> BenchmarkResult:
        """Score ``generations`` (id -> generations.jsonl row) against ``items``."""


# ---------------------------------------------------------------------- registry

BENCHMARKS: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make ``cls`` reachable as ``get_benchmark(cls.name)``."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"{cls.__name__} has no 'name'")
    BENCHMARKS[name] = cls
    return cls


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """An instance of the benchmark registered as ``name`` (importing the built-in modules first)."""
    import rlmt.benchmarks  # noqa: F401  (registers the built-in benchmarks)

    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; registered: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name](**options)


# ---------------------------------------------------------------------- statistics
# bootstrap_ci lives in rlmt.stats.bootstrap (the report uses it too).


def mean_metric(values: Sequence[float], scale: float = 100.0, seed: int = 0) -> Metric:
    """Mean (times ``scale``, percent by default) with its bootstrap CI."""
    vals = [float(v) for v in values]
    if not vals:
        return Metric(math.nan, None, None, 0)
    lo, hi = bootstrap_ci(vals, seed=seed)
    return Metric(scale * sum(vals) / len(vals), scale * lo, scale * hi, len(vals))


# ---------------------------------------------------------------------- generations


def answer_of(row: dict | None) -> str | None:
    """The scorable answer of a generations row, or None when the item is failed.

    None when there is no row, or the thought never ended (``answer_found`` false). Rows without
    an ``answer`` field (raw outputs from elsewhere) are not guessed at: the caller must extract.
    """
    if row is None or row.get("answer_found") is False:
        return None
    answer = row.get("answer")
    if answer is None:
        raise BenchmarkError(f"generation row {row.get('id')!r} has no 'answer' field; "
                             "run rlmt.thinking.extract on the raw output first")
    return str(answer)


def failed_score(item_id: str, row: dict | None) -> ItemScore:
    """The score of an item without a scorable answer: no generation, or a thought that never ended."""
    return ItemScore(item_id, None, {"reason": "missing-generation" if row is None else "thought-never-ended"})


def score_each(items: list[Item], generations: dict[str, dict],
               judge: Callable[[Item, str], tuple[float, dict]]) -> tuple[list[ItemScore], list[float], int]:
    """Score every item whose answer is scorable with ``judge(item, answer) -> (value, details)``.

    Returns (per-item scores, values for the mean — a failed item counts 0 —, number failed).
    """
    per_item: list[ItemScore] = []
    values: list[float] = []
    n_failed = 0
    for item in items:
        row = generations.get(item.id)
        answer = answer_of(row)
        if answer is None:
            n_failed += 1
            values.append(0.0)
            per_item.append(failed_score(item.id, row))
            continue
        value, details = judge(item, answer)
        values.append(value)
        per_item.append(ItemScore(item.id, value, details))
    return per_item, values, n_failed


def read_json_rows(path: Path, *, lines: bool | None = None) -> list[dict]:
    """The rows of a JSON file (one list) or a JSON-lines file (one object a line).

    ``lines`` defaults to the suffix (``.jsonl``); a broken line is an error naming its number.
    """
    if not (path.suffix == ".jsonl" if lines is None else lines):
        return json.loads(path.read_text(encoding="utf-8"))
    return [row for _, row in iter_json_lines(path, BenchmarkError)]


def read_generations(path: str | Path) -> dict[str, dict]:
    """Read ``generations.jsonl`` into id -> row; a malformed line is an error naming its line.

    The paper scores one sample per prompt: when a file holds several samples of an id, the first
    one is scored.
    """
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"generations file not found: {path}")
    rows: dict[str, dict] = {}
    for lineno, row in iter_json_lines(path, BenchmarkError):
        if "id" not in row:
            raise BenchmarkError(f"{path}:{lineno}: a generations row must be an object with an 'id'")
        rows.setdefault(str(row["id"]), row)  # n > 1 samples per id: the first sample is scored
    return rows


def limit_items(items: list[Item], limit: int | None, seed: int = 0) -> list[Item]:
    """The first ``limit`` items of a seeded shuffle (all items, in order, when limit is None)."""
    if limit is None or limit >= len(items):
        return items
    if limit < 0:
        raise BenchmarkError(f"limit must be >= 0, got {limit}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in sorted(order[:limit])]


def write_scores(result: BenchmarkResult, path: str | Path) -> None:
    """Write ``scores.json`` (NaN written as null so the file stays strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_nan_to_none(result.to_json()), indent=2) + "\n", encoding="utf-8")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
