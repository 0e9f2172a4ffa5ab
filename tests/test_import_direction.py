"""One direction of imports between stages: the report reads score files, never benchmark code, and
the benchmarks never read the report; what both need (Arena-Hard's Bradley-Terry fit) lives below
them in ``rlmt.stats``, which imports no stage at all.

Checked twice: statically (every ``import`` statement in the package's files, lazy ones inside
functions included) and by importing every report module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rlmt"


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """Absolute names of every module `path` (a file under the package directory `root`) imports, relative
    imports resolved against its package; ``from a import b`` counts as importing ``a`` and ``a.b``."""
    package = ".".join(path.relative_to(root.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # `from rlmt import benchmarks`
    return names


def offending(stage: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((PACKAGE / stage).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m in forbidden or m.startswith(tuple(f + "." for f in forbidden)))
        if bad:
            found[str(path.relative_to(PACKAGE.parent))] = bad
    return found


@pytest.mark.parametrize(("stage", "forbidden"), [
    ("report", ("rlmt.benchmarks",)),
    ("benchmarks", ("rlmt.report",)),
    # below both: no stage package (nor the CLI, tracking or config that stages use)
    ("stats", ("rlmt.benchmarks", "rlmt.report", "rlmt.train", "rlmt.data", "rlmt.generation", "rlmt.judges",
               "rlmt.models", "rlmt.preflight", "rlmt.cli", "rlmt.tracking", "rlmt.config", "rlmt.workflow")),
])
def test_no_module_of_a_stage_imports_the_forbidden_one(stage, forbidden):
    assert (PACKAGE / stage / "__init__.py").is_file()
    assert offending(stage, forbidden) == {}


@pytest.mark.parametrize("source", [
    "from rlmt.benchmarks.arena_style import Pair\n",
    "from rlmt import benchmarks\n",
    "def f():\n    import rlmt.benchmarks.base\n",
    "from ..benchmarks import base\n",
])
def test_the_static_check_sees_every_spelling_of_such_an_import(tmp_path, source):
    """The checker itself, on a probe file in a copy of the package layout."""
    probe = tmp_path / "rlmt" / "report" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    names = imported_modules(probe, root=tmp_path / "rlmt")
    assert any(m == "rlmt.benchmarks" or m.startswith("rlmt.benchmarks.") for m in names), names


def test_importing_every_report_module_loads_no_benchmark_code():
    modules = sorted(f"rlmt.report.{p.stem}" for p in (PACKAGE / "report").glob("*.py") if p.stem != "__init__")
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted(m for m in sys.modules if m.startswith('rlmt.benchmarks')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
