"""The four registries through which tasks, backends, strategies and runtimes are added, in one leaf module.

An entry is a factory plus the dataclass that holds its options. Registering is one line:

    @BACKENDS.register("my_model", MyModelConfig)
    class MyModelBackend(Backend): ...

after which `model=my_model` (and `model.<field>=...` overrides, validated against the dataclass) work from the CLI
without any YAML file.

Why a leaf: the configuration validates names against these registries, and must not import what they list (the
runtimes import the assembly layer, which imports the configuration). So each registry names the modules of its
built-in entries and imports them the first time someone asks it for a name; registering modules import only this
one. A user's module registers when it is imported, exactly like a built-in one.

Entries whose code imports torch are *declared* instead (`declare(name, Config, "module")`, from a module that
holds only their options): their options are known at once, and their module is imported when `factory` is first
used. `fedmm config` and `--help` so never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from fedmm.errors import FedmmError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    load: Callable[[], T]  # the factory (a declared entry imports its module the first time)
    config_cls: type
    hooks: dict[str, Callable] = field(default_factory=dict)  # optional extras a kind defines (a task's site count)

    @property
    def factory(self) -> T:
        return self.load()


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str, ...] = ()):
        self.kind = kind
        self._builtins = builtins  # modules that register the built-in entries, imported on first use
        self._loaded = False
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type, **hooks: Callable) -> Callable[[T], T]:
        def deco(factory: T) -> T:
            self._entries[name] = Entry(name, lambda: factory, config_cls, dict(hooks))
            return factory

        return deco

    def declare(self, name: str, config_cls: type, module: str, **hooks: Callable) -> None:
        """A built-in entry known by its options now, whose `module` (which registers it) is imported only when its
        factory is first needed. An entry already registered is left as it is."""

        def load() -> T:
            importlib.import_module(module)
            entry = self._entries[name]
            if entry.load is load:
                raise FedmmError(f"{module} does not register the {self.kind} '{name}' it is declared with")
            return entry.factory

        self._entries.setdefault(name, Entry(name, load, config_cls, dict(hooks)))

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)
            load_entry_point_plugins()

    def get(self, name: str) -> Entry[T]:
        self._load()
        if name not in self._entries:
            raise FedmmError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: Any) -> bool:
        self._load()
        return name in self._entries


ENTRY_POINTS = "fedmm.plugins"  # installed packages name their registering modules in this entry-point group
_PLUGINS_LOADED: set[str] = set()
_ENTRY_POINTS_SCANNED = False


def load_plugins(modules: Any) -> None:
    """Import the user's modules (the `plugins=[...]` option), so that what they register is selectable and
    validated like a built-in; a module that cannot be imported is a one-line error."""
    if isinstance(modules, str):  # plugins=my_module: one module
        modules = [modules]
    if modules is not None and not isinstance(modules, Sequence):
        raise FedmmError(
            f"plugins must be a list of module names, e.g. plugins=[my_package.my_module] (got {modules!r})"
        )
    for name in list(modules or []):
        name = str(name)
        if name in _PLUGINS_LOADED:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - whatever the user's module raised, named in one line
            raise FedmmError(
                f"plugin module '{name}' cannot be imported ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''}); install it or put it on PYTHONPATH, "
                f"or fix plugins="
            ) from None
        _PLUGINS_LOADED.add(name)


def load_entry_point_plugins() -> None:
    """The modules installed packages declare in the `fedmm.plugins` entry-point group, imported once."""
    global _ENTRY_POINTS_SCANNED
    if _ENTRY_POINTS_SCANNED:
        return
    _ENTRY_POINTS_SCANNED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        if ep.value not in _PLUGINS_LOADED:
            _PLUGINS_LOADED.add(ep.value)
            try:
                ep.load()
            except Exception as e:  # noqa: BLE001
                raise FedmmError(
                    f"plugin '{ep.name}' ({ep.value}, entry point {ENTRY_POINTS}) fails to load "
                    f"({type(e).__name__}: {str(e)[:120]}); fix or uninstall its package"
                ) from None


# factory(cfg, seed, centralized=False) -> TaskData; hook `site_count(cfg) -> int` for tasks with per-site folders
# (and `has_sites(cfg) -> bool` when only some settings use them)
TASKS: Registry[Callable] = Registry(
    "task", ("fedmm.data.easyvqa", "fedmm.data.synthetic", "fedmm.data.mmimdb", "fedmm.data.vqav2", "fedmm.data.table")
)
# factory(cfg, num_labels, multilabel) -> Backend
BACKENDS: Registry[Callable] = Registry(
    "model",
    ("fedmm.backends.configs",),  # declares the built-in backends; their torch code loads when used
)
# factory(cfg) -> Strategy
STRATEGIES: Registry[Callable] = Registry(
    "strategy",
    tuple(
        f"fedmm.fl.strategy.{m}"
        for m in (
            "fedavg",
            "fedprox",
            "fedavgm",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "configs",  # declares fedmap, whose module loads torch when a run builds it
            "lora",
            "median",
            "modality_avg",
            "trimmed_mean",
            "krum",
            "bulyan",
            "qfedavg",
            "fednova",
            "feddyn",
            "scaffold",
        )
    ),
)
# factory(cfg) -> Runtime (fedmm.runtime.base)
RUNTIMES: Registry[Callable] = Registry(
    "runtime", ("fedmm.runtime.local", "fedmm.runtime.flower", "fedmm.runtime.nvflare")
)
