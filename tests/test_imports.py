"""Imports only go down: xray_cli -> flows -> tasks -> xraycore, with no circle,
and importing a flow does no work (no cluster spec read, no Dask configured)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"xraycore": 0, "tasks": 1, "flows": 2, "xray_cli": 3}
# What the pure layer must never pull in (STYLE.md: xraycore is usable without them).
NOT_IN_XRAYCORE = ("prefect", "prefect_dask", "dask", "distributed")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module
            found.add(name)
            # ``from package import module`` imports the module
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}
    graph = {}
    for module, path in modules.items():
        graph[module] = {m for m in _imports(path, module) if m in modules and m != module}
    return graph


def _raw_imports() -> dict[str, set[str]]:
    return {
        _module_name(p): _imports(p, _module_name(p))
        for layer in LAYERS
        for p in sorted((ROOT / layer).rglob("*.py"))
    }


def test_every_layer_is_found():
    graph = _graph()
    for layer in LAYERS:
        assert any(m.split(".")[0] == layer for m in graph), layer
    assert "flows.preprocess" in graph["xray_cli.main"] or any(
        "flows" in m for m in graph["xray_cli.main"]
    )


def test_imports_only_go_down():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert not wrong, wrong


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, circles


def test_xraycore_needs_neither_prefect_nor_dask():
    wrong = [
        f"{module} imports {name}"
        for module, names in _raw_imports().items()
        if module.startswith("xraycore")
        for name in names
        if name.split(".")[0] in NOT_IN_XRAYCORE
    ]
    assert not wrong, wrong


def test_importing_the_flows_does_no_work():
    # A cluster spec that does not exist: reading it at import would raise.
    code = (
        "import sys, dask\n"
        "before = dask.config.get('distributed.nanny.pre-spawn-environ', default=None)\n"
        "import flows.preprocess, flows.classify, xray_cli.main\n"
        "assert 'distributed' not in sys.modules, 'a flow import started Dask'\n"
        "assert 'prefect_dask' not in sys.modules\n"
        "assert dask.config.get('distributed.nanny.pre-spawn-environ', default=None) == before\n"
    )
    env = {"XRAY_DASK_CLUSTER": "no-such-cluster", "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr


def test_the_training_loader_imports_torch_only_when_asked():
    code = (
        "import sys\n"
        "import xraycore, xraycore.loader, xraycore.training\n"
        "assert 'torch' not in sys.modules, 'importing xraycore.loader imported torch'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
