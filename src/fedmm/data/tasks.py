"""Tasks: where the samples come from, the label space, and which metrics the server reports. Tasks register in
`fedmm.registry.TASKS`; this module asks them for their data and whether they bring their own sites."""

from __future__ import annotations

from typing import Any, Optional

from fedmm.data.dataset import TaskData
from fedmm.registry import TASKS


def load_task(cfg: Any, seed: int, centralized: bool = False) -> TaskData:
    """`centralized` asks a task whose training data sits in per-site folders for the union of the sites, with
    every modality, in `train` (the centralized baseline) instead of per-site `clients`. Other tasks ignore it."""
    return TASKS.get(cfg.name).factory(cfg, seed, centralized=centralized)


def has_sites(cfg: Any) -> bool:
    """Whether the task's data comes in per-site folders (one client each) rather than being partitioned, from the
    settings alone (the folders may live at the sites). A task that can do both says which with a `has_sites`
    hook (task=table: with task.root)."""
    hooks = TASKS.get(cfg.name).hooks
    return "site_count" in hooks and hooks.get("has_sites", lambda c: True)(cfg)


def site_count(cfg: Any) -> Optional[int]:
    """How many per-site folders the task's data has, from the folders alone (no data read); None for a task
    whose training split fedmm partitions."""
    counter = TASKS.get(cfg.name).hooks.get("site_count")
    return counter(cfg) if counter else None
