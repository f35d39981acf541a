"""Bulyan (El Mhamdi et al., 2018): Krum to select, then a coordinate-wise trimmed mean around the median.

For n updates, f of which may be Byzantine (the rule needs n >= 4f + 3: a run whose rounds sample fewer clients is
refused before it starts; replies the server refused count as caught Byzantine clients, and failures lower f for
that round as in krum.py, recorded as `strategy_f`):
1. Selection: theta = n - 2f times, apply Krum to the remaining updates and move the one it picks into S.
2. Aggregation: per coordinate, the beta = theta - 2f values of S closest to the median of S, averaged.

Krum alone can be steered one coordinate at a time; the second step bounds every coordinate by the honest
majority's. Unweighted, and a client that did not send a tensor counts with the global value (see krum.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.fl.strategy.krum import check_bound, check_f, flatten, krum_scores, round_f, unflatten
from fedmm.fl.update import Update
from fedmm.params import Params
from fedmm.options import opt


def bulyan_select(x: np.ndarray, f: int) -> list[int]:
    """The indices Krum picks, one at a time from the remaining rows, n - 2f times."""
    remaining = list(range(len(x)))
    chosen = []
    for _ in range(len(x) - 2 * f):
        scores = krum_scores(x[remaining], f)
        chosen.append(remaining.pop(int(np.argmin(scores))))
    return chosen


def trimmed_around_median(s: np.ndarray, beta: int) -> np.ndarray:
    """Per column of s (theta, d): the mean of the beta values closest to the column's median."""
    med = np.median(s, axis=0)
    order = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
    return np.take_along_axis(s, order, axis=0).mean(axis=0)


def bulyan(x: np.ndarray, f: int) -> tuple[np.ndarray, list[int]]:
    if len(x) < 4 * f + 3:
        raise FedmmError(
            f"strategy=bulyan with strategy.f={f} needs at least {4 * f + 3} updates per round "
            f"(4f + 3), got {len(x)}; lower strategy.f or sample more clients"
        )
    chosen = bulyan_select(x, f)
    return trimmed_around_median(x[chosen], len(chosen) - 2 * f), chosen


@dataclass
class BulyanConfig:
    name: str = opt("bulyan", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    f: int = opt(1, "how many Byzantine clients to tolerate per round (needs 4f + 3 updates)")


@STRATEGIES.register("bulyan", BulyanConfig)
class Bulyan(Strategy):
    def __init__(self, cfg: BulyanConfig):
        check_f(cfg.f)
        super().__init__(cfg)

    def check_round_size(self, n: int) -> None:
        check_bound("bulyan", self.cfg.f, n, 4)

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        x = flatten(global_params, [u.params for u in updates])
        f = round_f(self.cfg.f, self.caught, len(x), 4)
        agg, chosen = bulyan(x, f)
        self.round_metrics = {"selected": sorted(updates[i].client_id for i in chosen), "f": f}
        return unflatten(global_params, agg)
