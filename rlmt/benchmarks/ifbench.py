"""IFBench (294 prompts, 57 new out-of-distribution instruction types), scored like IFEval.

Same file format and the same instruction-by-instruction strict/loose scoring as
:mod:`rlmt.benchmarks.ifeval`; the checkers are this project's (:mod:`ifbench_checkers`). An
instruction id without a checker here, or one whose nltk data is missing, is *unscorable*: counted
in ``extra.unscorable_reasons``, never passed or failed silently. IFBench rows carry every kwarg
name with nulls; only the non-null ones reach a checker.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Callable, ClassVar

from rlmt.benchmarks import ifbench_checkers
from rlmt.benchmarks.base import Item, limit_items, register
from rlmt.benchmarks.ifeval import (
    InstructionFollowingBenchmark,
    Unscorable,
    add_nltk_data_dir,
    find_data_file,
    read_instruction_rows,
    rows_to_items,
)


@register
class IFBench(InstructionFollowingBenchmark):
    """IFBench; ``data_dir/ifbench/{data.json,IFBench_test.jsonl}``."""

    name: ClassVar[str] = "ifbench"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        add_nltk_data_dir(data_dir)
        path = find_data_file(data_dir, "ifbench", ("data.json", "IFBench_test.jsonl", "data.jsonl"), self.name)
        return limit_items(rows_to_items(read_instruction_rows(path)), limit, seed)

    def checker(self, instruction_id: str, kwargs: dict, prompt: str) -> Callable[[str], bool]:
        fn = ifbench_checkers.CHECKERS.get(instruction_id)
        if fn is None:
            raise Unscorable(f"unknown-instruction:{instruction_id}")
        args = {k: v for k, v in (kwargs or {}).items() if v is not None}
        try:
            inspect.signature(fn).bind("", **args)
        except TypeError as err:
            raise Unscorable(f"bad-kwargs:{instruction_id}") from err

        def check(response: str) -> bool:
            try:
                return bool(response.strip()) and fn(response, **args)
            except ifbench_checkers.CheckerDataMissing as err:
                raise Unscorable(f"nltk-data-missing:{instruction_id}") from err

        return check
