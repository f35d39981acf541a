"""The Strategy interface shared by every runtime."""
from __future__ import annotations

from typing import Any, Callable

from fedmm.fl.params import Params, Update
from fedmm.registry import Registry


class Strategy:
    """Decides what each sampled client is asked to do and how their updates become the next global parameters.

    `state_dict()` must hold everything `aggregate` depends on besides its arguments (optimizer moments, learned
    aggregators...), so that a run resumed from a checkpoint continues exactly. Values may be numbers, strings,
    lists, dicts and numpy arrays.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def configure(self, rnd: int, client_ids: list[int], defaults: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Per-client training config for this round (by default the run's lr, local_epochs, ...)."""
        return {cid: dict(defaults) for cid in client_ids}

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# factory(cfg) -> Strategy
STRATEGIES: Registry[Callable[..., Strategy]] = Registry("strategy")
