"""Registries through which users add tasks, backends, strategies and runtimes.

An entry is a factory plus the dataclass that holds its options. Registering is one line:

    @backends.register("my_model", MyModelConfig)
    class MyModelBackend(Backend): ...

after which `model=my_model` (and `model.<field>=...` overrides, validated against the dataclass) work from the CLI
without any YAML file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from fedmm.errors import FedmmError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    config_cls: type


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_cls: type) -> Callable[[T], T]:
        def deco(factory: T) -> T:
            self._entries[name] = Entry(name, factory, config_cls)
            return factory

        return deco

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise FedmmError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: Any) -> bool:
        return name in self._entries
