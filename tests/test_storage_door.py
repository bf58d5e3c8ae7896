"""xraycore/store/storage.py is the only door to fsspec and s3fs (CONTRIBUTING.md: a class that
wraps a library hides it): no other module of the pipeline imports them, reaches
a Storage's filesystem, or calls an s3fs private method."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("xraycore", "tasks", "flows", "xray_cli")
DOOR = ROOT / "xraycore" / "store" / "storage.py"
#: Libraries that only the door imports.
WRAPPED = ("fsspec", "s3fs")
#: Attributes that reach behind the door: a Storage's filesystem, and the s3fs
#: private methods that bypass its retries and path handling.
BEHIND_THE_DOOR = ("fs", "_fs", "_call_s3", "_strip_protocol")


def door_violations(source: str, filename: str = "<string>") -> list[str]:
    """Every import of fsspec/s3fs and every attribute named in
    :data:`BEHIND_THE_DOOR` in ``source``, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in WRAPPED:
                found.append(f"{filename}:{node.lineno}: imports {name}")
        if isinstance(node, ast.Attribute) and node.attr in BEHIND_THE_DOOR:
            found.append(f"{filename}:{node.lineno}: reaches .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in BEHIND_THE_DOOR
        ):
            found.append(f"{filename}:{node.lineno}: reaches .{node.args[1].value} by name")
    return found


def _modules() -> list[Path]:
    return [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]


def test_the_door_and_the_modules_behind_it_are_found():
    paths = _modules()
    assert DOOR in paths
    assert {p.relative_to(ROOT).parts[0] for p in paths} == set(PACKAGES)
    # The door itself does what the others must not: the checker sees it.
    assert door_violations(DOOR.read_text(), str(DOOR))


def test_only_the_storage_module_touches_fsspec_and_s3fs():
    found = [
        v
        for path in _modules()
        if path != DOOR
        for v in door_violations(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == [], "go through xraycore.store.storage.Storage instead:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("planted", "what"),
    [
        ("import fsspec\n", "imports fsspec"),
        ("import s3fs.core as core\n", "imports s3fs.core"),
        (
            "from fsspec.implementations.local import LocalFileSystem\n",
            "imports fsspec.implementations.local",
        ),
        ("def f():\n    from s3fs import S3FileSystem\n", "imports s3fs"),
        ("def f(storage):\n    return storage.fs.ls('x')\n", "reaches .fs"),
        ("def f(storage):\n    return storage._fs.info('x')\n", "reaches ._fs"),
        ("async def f(fs):\n    await fs._call_s3('head_object')\n", "reaches ._call_s3"),
        ("def f(fs, p):\n    return fs._strip_protocol(p)\n", "reaches ._strip_protocol"),
        ("def f(storage):\n    return getattr(storage, '_fs')\n", "reaches ._fs by name"),
    ],
)
def test_the_check_finds_a_planted_violation(planted, what):
    (violation,) = door_violations(planted, "planted.py")
    assert violation.startswith("planted.py:") and violation.endswith(what)


def test_the_check_leaves_ordinary_code_alone():
    clean = (
        "from xraycore.store.storage import Storage\n"
        "from . import fsspec_notes\n"  # a relative module that only shares the prefix
        "def f(url):\n"
        "    st = Storage.from_url(url)\n"
        "    return st.read_bytes('a'), st.files, st.fsync\n"
    )
    assert door_violations(clean) == []
