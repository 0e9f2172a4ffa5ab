"""Benchmarks: one shared protocol (:mod:`rlmt.benchmarks.base`) and one module per benchmark.

Importing this package registers every benchmark module found in it.
"""

from __future__ import annotations

import importlib
import pkgutil

from rlmt.benchmarks.base import (  # noqa: F401
    BENCHMARKS,
    Benchmark,
    BenchmarkError,
    BenchmarkResult,
    Item,
    ItemScore,
    Metric,
    bootstrap_ci,
    get_benchmark,
    register,
    write_scores,
)

_NOT_BENCHMARKS = {"base", "fetch", "item_files", "judged", "judging", "scoring"}

# Every module of this package registers its benchmark(s) on import: discover them instead of
# keeping a list, so a benchmark module added by anyone is found without editing this file.
for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _NOT_BENCHMARKS and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
