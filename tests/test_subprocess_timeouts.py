"""Every subprocess call in rlmt/ and tests/ has a timeout, so a hung child fails one test, not the CI run.

The check reads the source (AST): ``subprocess.run/call/check_call/check_output`` (also imported by
name) need ``timeout=``; ``.wait()`` and ``.communicate()`` need a timeout argument.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = {"run", "call", "check_call", "check_output"}
WAITS = {"wait", "communicate"}


def calls_without_timeout(source: str, name: str = "<source>") -> list[str]:
    tree = ast.parse(source, filename=name)
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "subprocess"
                for a in n.names if a.name in RUNNERS}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, keywords = node.func, {k.arg for k in node.keywords}
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "subprocess":
            runner = func.attr in RUNNERS
        else:
            runner = isinstance(func, ast.Name) and func.id in imported
        waits = isinstance(func, ast.Attribute) and func.attr in WAITS and not node.args
        if (runner or waits) and "timeout" not in keywords:
            found.append((node.lineno, f"{name}:{node.lineno}: {ast.unparse(func)}(...) has no timeout"))
    return [text for _, text in sorted(found)]


def test_the_check_finds_calls_without_a_timeout():
    source = ("import subprocess\nfrom subprocess import check_output as co\n"
              "subprocess.run(['x'])\nsubprocess.run(['x'], timeout=5)\nco(['x'])\n"
              "p = subprocess.Popen(['x'])\np.wait()\np.wait(5)\np.communicate(timeout=5)\np.communicate()\n")
    assert [f.split(": ", 1)[0] for f in calls_without_timeout(source)] == [
        "<source>:3", "<source>:5", "<source>:7", "<source>:10"]


def test_every_subprocess_call_in_rlmt_and_tests_has_a_timeout():
    found = [f for folder in ("rlmt", "tests") for path in sorted((ROOT / folder).rglob("*.py"))
             for f in calls_without_timeout(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "\n".join(found)
