"""Tasks: where the samples come from, the label space, and which metrics the server reports."""
from __future__ import annotations

from typing import Callable

from fedmm.data.dataset import TaskData
from fedmm.registry import Registry

# factory(config dataclass, seed, centralized=False) -> TaskData
TASKS: Registry[Callable[..., TaskData]] = Registry("task")


def load_task(cfg, seed: int, centralized: bool = False) -> TaskData:
    """`centralized` asks a task whose training data sits in per-site folders for the union of the sites, with
    every modality, in `train` (the centralized baseline) instead of per-site `clients`. Other tasks ignore it."""
    return TASKS.get(cfg.name).factory(cfg, seed, centralized=centralized)


# Built-in tasks register themselves on import.
from fedmm.data import easyvqa as _easyvqa  # noqa: E402,F401
from fedmm.data import synthetic as _synthetic  # noqa: E402,F401
from fedmm.data import mmimdb as _mmimdb  # noqa: E402,F401
from fedmm.data import vqav2 as _vqav2  # noqa: E402,F401
