"""One way to replace a file atomically (xraycore.store.durable.atomic_path),
used by every local writer of the project."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from xraycore.store.durable import atomic_path, write_atomic
from xraycore.store.schema import is_temporary

ROOT = Path(__file__).resolve().parents[3]


def test_the_new_content_replaces_the_file_whole(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    write_atomic(target, b"new", sync=True)
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_a_write_that_raises_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        assert is_temporary(tmp) and os.path.dirname(tmp) == str(tmp_path)
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_nothing_else_renames_a_file_into_place():
    """``os.replace`` and ``Path.replace``/``rename`` are called in durable.py only."""
    found = []
    for layer in ("xraycore", "flows", "tasks", "xray_cli"):
        for path in sorted((ROOT / layer).rglob("*.py")):
            if path == ROOT / "xraycore" / "store" / "durable.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("replace", "rename")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("os", "tmp")
                ):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not found, found
