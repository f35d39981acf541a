"""The layering of fedmm's packages (docs/ARCHITECTURE.md), read from the source: every import of every module,
including imports inside functions and under TYPE_CHECKING, must point to the same or a lower layer, and neither
fedmm's top-level packages nor its modules may import each other in a cycle.

The registries name their built-in modules as strings and import them on first use (plugin discovery, see
fedmm/registry.py); those are not imports of the registry's layer, and the last test checks they all register."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

# Lowest first. A module may import its own layer and the layers below it.
LAYERS = [
    (
        "foundation",
        {"errors", "options", "registry", "params", "metrics", "record", "schedule", "modelops", "console", "conf"},
    ),
    ("configuration and run files", {"config", "rundir", "report", "launch", "sweep"}),
    ("data", {"data"}),
    ("backends", {"backends"}),
    ("training", {"train"}),
    ("federated core", {"fl"}),
    ("client", {"client"}),
    ("assembly", {"experiment"}),
    ("runtimes", {"runtime"}),
    ("entry points", {"api", "cli", "__init__"}),
]
RANK = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, src: Path) -> set[str]:
    """The fedmm modules `path` imports anywhere in its body (`from fedmm.x import y` counts as fedmm.x.y when y
    is a module)."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(
                    sub
                    if (src / sub.replace(".", "/")).with_suffix(".py").exists()
                    or (src / sub.replace(".", "/") / "__init__.py").exists()
                    else base
                )
    return {m for m in found if m == "fedmm" or m.startswith("fedmm.")}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(src: Path) -> dict[str, set[str]]:
    return {module_name(p, src): imports(p, src) - {module_name(p, src)} for p in sorted((src / "fedmm").rglob("*.py"))}


def layer_violations(src: Path) -> list[str]:
    """'a.b -> c.d' for every import of a higher layer."""
    out = []
    for mod, deps in graph(src).items():
        for dep in sorted(deps):
            if unit(dep) not in RANK or unit(mod) not in RANK:
                out.append(f"{mod} -> {dep} (not in LAYERS: add the new package to a layer)")
            elif RANK[unit(dep)] > RANK[unit(mod)]:
                out.append(f"{mod} -> {dep} ({LAYERS[RANK[unit(mod)]][0]} imports {LAYERS[RANK[unit(dep)]][0]})")
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def unit_graph(src: Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, deps in graph(src).items():
        edges[unit(mod)].update(unit(d) for d in deps if unit(d) != unit(mod))
    return edges


def module_graph(src: Path) -> dict[str, set[str]]:
    """Module imports, less a package's `__init__` importing its own modules (re-exports): importing a package's
    module runs its `__init__` anyway, so such an edge is no dependency of its own."""
    g = graph(src)
    packages = {m for m in g if (src / m.replace(".", "/") / "__init__.py").exists()}
    return {m: {d for d in deps if not (m in packages and d.startswith(m + "."))} for m, deps in g.items()}


def test_no_layer_imports_a_higher_one():
    assert layer_violations(SRC) == []


def test_no_cycle_between_top_level_packages():
    assert cycles(unit_graph(SRC)) == []


def test_no_cycle_between_modules():
    assert cycles(module_graph(SRC)) == []


def test_the_checks_catch_what_they_guard_against(tmp_path):
    """A planted upward import and a planted cycle are reported (the test above cannot pass vacuously)."""
    pkg = tmp_path / "fedmm"
    for mod, body in {
        "__init__": "",
        "errors": "",
        "registry": "from fedmm.errors import X\n",
        "fl/__init__": "",
        "fl/server": "def f():\n    from fedmm.runtime.local import run\n",
        "runtime/__init__": "",
        "runtime/local": "from fedmm.fl import server\n",
        "data/__init__": "",
        "data/tasks": "from fedmm.data import easyvqa\n",
        "data/easyvqa": "from .tasks import TASKS\n",
    }.items():
        (pkg / mod).with_suffix(".py").parent.mkdir(parents=True, exist_ok=True)
        (pkg / mod).with_suffix(".py").write_text(body)
    assert layer_violations(tmp_path) == ["fedmm.fl.server -> fedmm.runtime.local (federated core imports runtimes)"]
    assert cycles(unit_graph(tmp_path)) == [["fl", "runtime"]]
    assert ["fedmm.data.easyvqa", "fedmm.data.tasks"] in cycles(module_graph(tmp_path))


@pytest.mark.parametrize("registry", ["TASKS", "BACKENDS", "STRATEGIES", "RUNTIMES"])
def test_every_built_in_module_a_registry_names_registers(registry):
    import importlib

    from fedmm import registry as R

    reg = getattr(R, registry)
    names = set(reg.names())  # imports the built-in modules
    for module in reg._builtins:
        mod = importlib.import_module(module)
        # a module registers an entry (its factory lives there) or declares one (its options live there)
        assert any(
            getattr(reg.get(n).factory, "__module__", "").startswith(mod.__name__)
            or reg.get(n).config_cls.__module__ == mod.__name__
            for n in names
        ), module
    for name in names:  # and every declared entry's module really registers it
        assert callable(reg.get(name).factory), name


def test_a_declared_entry_loads_its_module_once_asked_and_says_so_when_it_does_not_register():
    from dataclasses import dataclass

    from fedmm.errors import FedmmError
    from fedmm.registry import Registry

    @dataclass
    class Cfg:
        name: str = "x"

    reg = Registry("thing")
    reg.declare("x", Cfg, "json")  # json registers nothing here
    assert reg.get("x").config_cls is Cfg  # the options are known without importing anything
    with pytest.raises(FedmmError, match="json does not register the thing 'x' it is declared with"):
        _ = reg.get("x").factory
    reg.register("y", Cfg)(len)
    reg.declare("y", Cfg, "json")  # an entry already registered stays as it is
    assert reg.get("y").factory is len
