"""The shape of the library (issue: one package per stage): module and function sizes, imports at
module top. A check of the source tree itself, so a change that regrows a 1000-line module or a
screen-scrolling function fails here instead of in review."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "a5ocr").rglob("*.py"), *(ROOT / "cli").rglob("*.py")])
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# A function-local import is allowed only with a comment on its line (or the line before) that
# says why: "# local: <reason>" (a real import cycle, or a heavy optional dependency).
LOCAL_MARK = "# local:"


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_the_tree_has_sources():
    assert len(SOURCES) > 20


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_module_is_at_most_500_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{_rel(path)} has {n} lines: split it along its concepts"


def _functions(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_functions_fit_on_a_screen(path):
    tree = ast.parse(path.read_text())
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines, line {f.lineno})" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{_rel(path)}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


@pytest.mark.parametrize("path", SOURCES, ids=_rel)
def test_imports_are_at_module_top_unless_a_comment_says_why(path):
    lines = path.read_text().splitlines()
    tree = ast.parse("\n".join(lines))
    bad = []
    for f in _functions(tree):
        for node in ast.walk(f):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                here = lines[node.lineno - 1]
                before = lines[node.lineno - 2] if node.lineno > 1 else ""
                if LOCAL_MARK not in here and LOCAL_MARK not in before:
                    bad.append(f"line {node.lineno}: {here.strip()}")
    assert not bad, f"{_rel(path)}: function-local imports without a '{LOCAL_MARK}' reason: {bad}"
