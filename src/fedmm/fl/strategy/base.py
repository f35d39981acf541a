"""The Strategy interface shared by every runtime."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from fedmm.fl.params import Params, Update
from fedmm.registry import Registry


@dataclass
class StrategyContext:
    """What the server knows besides the updates, handed to `Strategy.setup` once before the first round.

    `evaluate_val` scores candidate global models on the server's *validation* split (never the test split), with
    the one model instance the server already holds.
    """

    evaluate_val: Optional[Callable[[Params], dict[str, float]]] = None
    metric: str = "accuracy"  # the task's first metric: what "better" means for strategies that search
    stat_keys: frozenset[str] = frozenset()  # running statistics (BatchNorm buffers): averaged, never "optimized"
    run_dir: Optional[Path] = None
    seed: int = 0


class Strategy:
    """Decides what each sampled client is asked to do and how their updates become the next global parameters.

    `state_dict()` must hold everything `aggregate` depends on besides its arguments (optimizer moments, learned
    aggregators...), so that a run resumed from a checkpoint continues exactly. Values may be numbers, strings,
    lists, dicts and numpy arrays.

    `round_metrics` is filled by `aggregate` with what the strategy wants recorded in metrics.jsonl for the round
    (written as `strategy_<name>`).

    A `streaming` strategy reads the updates once, in order, as an iterable: the server then hands them over as they
    arrive and never holds all K of them (a running sum). Others get a list.
    """

    streaming = False

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.ctx = StrategyContext()
        self.round_metrics: dict[str, Any] = {}

    def setup(self, ctx: StrategyContext) -> None:
        self.ctx = ctx

    def travels(self, key: str) -> bool:
        """Whether a trainable tensor is trained by clients and sent both ways. A strategy can keep some frozen at
        their shared initial values (FFA-LoRA's A matrices): the experiment then freezes them everywhere."""
        return True

    def configure(self, rnd: int, client_ids: list[int], defaults: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Per-client training config for this round (by default the run's lr, local_epochs, ...)."""
        return {cid: dict(defaults) for cid in client_ids}

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        """The next global parameters. `updates` is a list, or, for a `streaming` strategy, an iterable."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


# factory(cfg) -> Strategy
STRATEGIES: Registry[Callable[..., Strategy]] = Registry("strategy")
