"""IFBench (294 prompts, 57 new out-of-distribution instruction types), scored like IFEval.

Same file format and the same instruction-by-instruction strict/loose scoring as
:mod:`rlmt.benchmarks.ifeval` (the official IFBench evaluation is IFEval's, loose variants
included). The checkers have the official semantics of allenai/IFBench ``d793cb6``, the version
our data comes from (:mod:`ifbench_checkers` says why and lists each deliberate difference);
``reading: corrected`` swaps in the corrected readings of the ids whose official checker is plainly
wrong (:mod:`ifbench_corrected` lists them); ``extra.reading`` records which was used.

An instruction id without a checker, or one whose nltk data is missing, is *unscorable*: counted
in ``extra.unscorable_reasons``, never passed or failed silently. IFBench rows carry every kwarg
name with nulls; only the non-null ones reach a checker (as in the official evaluation). A checker
that would raise in the official code (and crash its run) fails the instruction here.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, ClassVar

from rlmt.benchmarks import ifbench_checkers
from rlmt.benchmarks.base import BenchmarkError, BenchmarkResult, Item, limit_items, register
from rlmt.benchmarks.ifbench_corrected import CORRECTED
from rlmt.benchmarks.ifeval import (
    InstructionFollowingBenchmark,
    Unscorable,
    add_nltk_data_dir,
    find_data_file,
    read_instruction_rows,
    rows_to_items,
)


OFFICIAL_VERSION = "allenai/IFBench@d793cb6"


@register
class IFBench(InstructionFollowingBenchmark):
    """IFBench; ``data_dir/ifbench/{data.json,IFBench_test.jsonl}``."""

    name: ClassVar[str] = "ifbench"
    readings: ClassVar[tuple[str, ...]] = ("official", "corrected")

    @property
    def reading(self) -> str:
        reading = self.options.get("reading", "official")
        if reading not in self.readings:
            raise BenchmarkError(f"ifbench: unknown reading {reading!r}; allowed: {list(self.readings)}")
        return reading

    def score(self, items, generations, **ctx) -> BenchmarkResult:
        result = super().score(items, generations, **ctx)
        result.extra["reading"] = self.reading
        result.extra["official_version"] = OFFICIAL_VERSION
        if self.reading == "corrected":
            result.extra["corrected_ids"] = sorted(CORRECTED)
        return result

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        add_nltk_data_dir(data_dir)
        path = find_data_file(data_dir, "ifbench", ("data.json", "IFBench_test.jsonl", "data.jsonl"), self.name)
        return limit_items(rows_to_items(read_instruction_rows(path)), limit, seed)

    def checker(self, instruction_id: str, kwargs: dict, prompt: str) -> Callable[[str], bool]:
        fn = ifbench_checkers.CHECKERS.get(instruction_id)
        if self.reading == "corrected":
            fn = CORRECTED.get(instruction_id, fn)
        if fn is None:
            raise Unscorable(f"unknown-instruction:{instruction_id}")
        args = {k: v for k, v in (kwargs or {}).items() if v is not None}
        try:
            inspect.signature(fn).bind("", **args)
        except TypeError as err:
            raise Unscorable(f"bad-kwargs:{instruction_id}") from err

        def check(response: str) -> bool:
            if not response.strip():
                return False
            try:
                return bool(fn(response, **args))
            except ifbench_checkers.CheckerDataMissing as err:
                raise Unscorable(f"nltk-data-missing:{instruction_id}") from err
            except (IndexError, ZeroDivisionError, ValueError):
                return False  # the official checker raises here (its run crashes): not followed

        return check
