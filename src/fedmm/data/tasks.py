"""Tasks: where the samples come from, the label space, and which metrics the server reports."""
from __future__ import annotations

from typing import Callable

from fedmm.data.dataset import TaskData
from fedmm.registry import Registry

# factory(config dataclass, seed) -> TaskData
TASKS: Registry[Callable[..., TaskData]] = Registry("task")


def load_task(cfg, seed: int) -> TaskData:
    return TASKS.get(cfg.name).factory(cfg, seed)


# Built-in tasks register themselves on import.
from fedmm.data import easyvqa as _easyvqa  # noqa: E402,F401
from fedmm.data import synthetic as _synthetic  # noqa: E402,F401
