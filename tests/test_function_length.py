"""No function of the package's layers has a body over 80 lines.

The body is counted from its first statement after the docstring to its last
line, so a docstring may make a function as long as its words need (issue 21
counted the docstring, which rewarded squeezing parameters and words; issue 31
counts the body instead)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("xraycore", "tasks", "flows", "xray_cli")
MAX_BODY_LINES = 80


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the body."""
    body = node.body
    if ast.get_docstring(node, clean=False) is not None:
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def long_functions(source: str, name: str = "<source>") -> list[str]:
    """``name:line function (N lines)`` for every function of ``source`` (methods
    and nested functions included) whose body is over :data:`MAX_BODY_LINES`."""
    return [
        f"{name}:{node.lineno} {node.name} ({body_lines(node)} lines)"
        for node in ast.walk(ast.parse(source, name))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and body_lines(node) > MAX_BODY_LINES
    ]


def test_no_function_body_is_over_80_lines():
    paths = [p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]
    assert len(paths) > 50  # the layers were found
    found = [f for p in paths for f in long_functions(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, found


def test_the_body_is_counted_without_the_docstring():
    words = "\n".join(f"    line {i} of its docstring" for i in range(100))
    statements = "\n".join(f"    x{i} = {i}" for i in range(80))
    short = f'def f():\n    """Summary.\n\n{words}\n    """\n{statements}\n'
    assert long_functions(short) == []
    long = short + "    return x0\n"
    assert long_functions(long) == ["<source>:1 f (81 lines)"]


def test_methods_and_nested_functions_are_counted():
    statements = "\n".join(f"        x{i} = {i}" for i in range(81))
    method = f"class C:\n    def m(self):\n{statements}\n"
    assert long_functions(method) == ["<source>:2 m (81 lines)"]
    nested = f"def outer():\n    def inner():\n{statements}\n"
    assert long_functions(nested) == ["<source>:1 outer (82 lines)", "<source>:2 inner (81 lines)"]
