"""demo-if: the project's own small instruction-following set, scored with the IFEval checkers.

It ships inside the package (``rlmt/resources/demo_if.jsonl``, IFEval format: ``key``,
``prompt``, ``instruction_id_list``, ``kwargs``) so the embedded default evaluates something real
on a machine without benchmark downloads. Option ``path`` points at another file of the same
format (tests use it).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import ClassVar

from rlmt.benchmarks.base import BenchmarkError, Item, limit_items, register
from rlmt.benchmarks.ifeval import IFEval, add_nltk_data_dir, read_instruction_rows, rows_to_items

RESOURCE = "demo_if.jsonl"


@register
class DemoIF(IFEval):
    name: ClassVar[str] = "demo-if"

    def load_items(self, data_dir: Path | None, limit: int | None = None, seed: int = 0) -> list[Item]:
        add_nltk_data_dir(data_dir)
        if self.options.get("path"):
            path = Path(self.options["path"])
            if not path.exists():
                raise BenchmarkError(f"demo-if: file not found: {path}")
            rows = read_instruction_rows(path)
        else:
            resource = resources.files("rlmt.resources").joinpath(RESOURCE)
            if not resource.is_file():
                raise BenchmarkError(f"demo-if: the package resource rlmt/resources/{RESOURCE} is missing")
            with resources.as_file(resource) as path:
                rows = read_instruction_rows(Path(path))
        return limit_items(rows_to_items(rows), limit, seed)
