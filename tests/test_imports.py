"""Imports only go down: xray_cli -> flows -> tasks -> xraycore, with no circle,
and importing a flow does no work (no cluster spec read, no Dask configured)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"xraycore": 0, "tasks": 1, "flows": 2, "xray_cli": 3}
# What the pure layer must never pull in (CONTRIBUTING.md: xraycore is usable without them).
NOT_IN_XRAYCORE = ("prefect", "prefect_dask", "dask", "distributed")


_FROM = "from:"  # marks a ``from X import a, b`` in what _imports returns


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
            found.add(f"{_FROM}{name}:" + ",".join(alias.name for alias in node.names))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports. ``from package import module``
    counts as an import of the module only: the package's ``__init__`` runs first, but
    what a package re-exports from its own modules is not a dependency of theirs."""
    modules = {_module_name(p): p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))}
    graph = {}
    for module, path in modules.items():
        found = _imports(path, module)
        only_modules = set()
        for mark in (m for m in found if m.startswith(_FROM)):
            package, _, names = mark[len(_FROM) :].partition(":")
            if all(f"{package}.{n}" in modules for n in names.split(",")):
                only_modules.add(package)
        graph[module] = {m for m in found - only_modules if m in modules and m != module}
    return graph


def _raw_imports() -> dict[str, set[str]]:
    return {
        _module_name(p): {m for m in _imports(p, _module_name(p)) if not m.startswith(_FROM)}
        for layer in LAYERS
        for p in sorted((ROOT / layer).rglob("*.py"))
    }


def test_every_layer_is_found():
    graph = _graph()
    for layer in LAYERS:
        assert any(m.split(".")[0] == layer for m in graph), layer
    # The command line's modules (xray_cli.main registers them) import the flows.
    cli = set().union(*(targets for m, targets in graph.items() if m.split(".")[0] == "xray_cli"))
    assert "flows.preprocess" in cli or any(m.split(".")[0] == "flows" for m in cli)


def test_imports_only_go_down():
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert not wrong, wrong


#: Inside xraycore: image <- store <- sources <- predict <- train. A package may import
#: only the packages named here (and the shared checks, ``xraycore._validate``); the
#: modules directly in xraycore (``batch``, the glue of a batch job) may import them all.
#: What goes into a store (``sources``) reads through the store's Storage and writes
#: its columns, so it sits above the store, which never imports it.
PACKAGE_IMPORTS = {
    "xraycore.image": set(),
    "xraycore.store": {"xraycore.image"},
    "xraycore.sources": {"xraycore.image", "xraycore.store"},
    # The comparison sheet reads the original scans.
    "xraycore.predict": {"xraycore.image", "xraycore.store", "xraycore.sources"},
    # A trained model writes the contract that prediction reads.
    "xraycore.train": {"xraycore.image", "xraycore.store", "xraycore.predict"},
}


def _package(module: str) -> str | None:
    return next((p for p in PACKAGE_IMPORTS if module == p or module.startswith(p + ".")), None)


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import inside xraycore that runs against its packages' layers."""
    wrong = []
    for module, targets in graph.items():
        own = _package(module)
        if own is None:
            continue
        for target in targets:
            other = _package(target)
            if other is not None and other != own and other not in PACKAGE_IMPORTS[own]:
                wrong.append(f"{module} imports {target}")
            elif (
                other is None and target.startswith("xraycore.") and target != "xraycore._validate"
            ):
                wrong.append(f"{module} imports {target} (a module above the packages)")
    return wrong


def test_xraycore_packages_import_only_downwards():
    assert not layer_violations(_graph()), layer_violations(_graph())


def test_an_import_against_the_layers_is_caught():
    graph = _graph()
    planted = {
        "xraycore.image.edges": {"xraycore.store.schema"},
        "xraycore.store.schema": {"xraycore.train.loader"},
        "xraycore.store.verify": {"xraycore.predict.evaluation"},
        "xraycore.store._scans": {"xraycore.sources.header"},
        "xraycore.sources.catalog": {"xraycore.train.loader"},
        "xraycore.predict.scoring": {"xraycore.train.loader"},
        "xraycore.image.decode": {"xraycore.batch"},
    }
    for module, targets in planted.items():
        broken = {**graph, module: graph[module] | targets}
        found = layer_violations(broken)
        assert [f"{module} imports {t}" for t in targets][0] in " ".join(found), (module, found)


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


def test_importing_xraycore_never_imports_torch():
    """torch is an optional extra (``[torch]``) and takes seconds to import: xraycore's
    modules and the CLI import it inside the functions that train, never at import."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import xraycore\n"
        "for m in pkgutil.walk_packages(xraycore.__path__, 'xraycore.'):\n"
        "    if not m.name.rpartition('.')[2].startswith('_'):\n"
        "        importlib.import_module(m.name)\n"
        "import xray_cli.main\n"
        "heavy = ('torch', 'monai', 'onnxscript')\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "assert not loaded, loaded\n"
        "assert 'xraycore.train.cnn' in sys.modules\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
