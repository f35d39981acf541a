"""Krum and Multi-Krum (Blanchard et al., 2017): keep the updates closest to their neighbours, drop the outliers.

For n updates, f of which may be Byzantine, flattened to vectors x_1..x_n:

    score(i) = sum of ||x_i - x_j||^2 over the n - f - 2 updates j != i closest to x_i
    Krum       = x_i with the lowest score
    Multi-Krum = the mean of the m updates with the lowest scores (m = n - f by default)

The paper assumes n >= 2f + 3: a run whose rounds sample fewer clients is refused before it starts. Replies the
server refused this round (malformed, out of bounds) are Byzantine clients already caught, so the round's updates
hold at most f - caught others; when failures (timeouts) leave fewer than 2f' + 3 updates, f' is lowered to what
the updates can support and the record says so (`strategy_f`). The neighbour count is max(1, n - f - 2), as
Flower's Krum does.
Unweighted by design (as in the paper): weighting by example counts would let a client that claims many examples
dominate again. A client that did not send a tensor (it lacks that modality) counts with the global value there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.fl.update import Update
from fedmm.params import Params
from fedmm.options import opt


def flatten(global_params: Params, updates: list[Params]) -> np.ndarray:
    """(n, d) float64: each update's tensors in the order of `global_params`, global values where it sent none."""
    return np.stack(
        [
            np.concatenate([np.asarray(p.get(k, g), dtype=np.float64).ravel() for k, g in global_params.items()])
            for p in updates
        ]
    )


def unflatten(global_params: Params, x: np.ndarray) -> Params:
    out, i = {}, 0
    for k, g in global_params.items():
        out[k] = x[i : i + g.size].reshape(g.shape).astype(g.dtype)
        i += g.size
    return out


def krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """score(i): the sum of squared distances from x_i to its n - f - 2 nearest other rows (at least 1)."""
    n = len(x)
    d = np.stack([((x - x[i]) ** 2).sum(axis=1) for i in range(n)])  # exact, unlike |a|^2 + |b|^2 - 2ab
    np.fill_diagonal(d, np.inf)
    k = min(max(1, n - f - 2), n - 1)
    return np.sort(d, axis=1)[:, :k].sum(axis=1)


def multi_krum_select(x: np.ndarray, f: int, m: int) -> np.ndarray:
    """The indices of the m rows with the lowest Krum scores (ties: the lower index first)."""
    return np.argsort(krum_scores(x, f), kind="stable")[:m]


@dataclass
class KrumConfig:
    name: str = opt("krum", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    f: int = opt(1, "how many Byzantine clients to tolerate per round")


@dataclass
class MultiKrumConfig:
    name: str = opt("multikrum", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    f: int = opt(1, "how many Byzantine clients to tolerate per round")
    m: Optional[int] = opt(None, "how many updates to average (default n - f)")


def check_f(f: int) -> None:
    if f < 0:
        raise FedmmError(f"strategy.f must be >= 0 (got {f})")


def round_f(f: int, caught: int, n: int, per_f: int) -> int:
    """The f a round of `n` updates is aggregated with: f less the Byzantine replies already caught, then lowered
    until n >= per_f * f + 3 holds (0 at the least). Krum: per_f = 2; Bulyan: per_f = 4."""
    return max(0, min(f - caught, (n - 3) // per_f))


def check_bound(name: str, f: int, n: int, per_f: int) -> None:
    if n < per_f * f + 3:
        raise FedmmError(
            f"strategy={name} with strategy.f={f} needs at least {per_f * f + 3} clients per round ({per_f}f + 3), "
            f"but a round samples {n}; lower strategy.f or sample more clients (clients_per_round)"
        )


@STRATEGIES.register("krum", KrumConfig)
class Krum(Strategy):
    def __init__(self, cfg):
        check_f(cfg.f)
        super().__init__(cfg)

    def keep(self, n: int, f: int) -> int:
        return 1

    def check_round_size(self, n: int) -> None:
        check_bound(self.cfg.name, self.cfg.f, n, 2)

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        x = flatten(global_params, [u.params for u in updates])
        f = round_f(self.cfg.f, self.caught, len(x), 2)
        chosen = multi_krum_select(x, f, min(self.keep(len(x), f), len(x)))
        self.round_metrics = {"selected": [updates[i].client_id for i in sorted(chosen)], "f": f}
        return unflatten(global_params, x[chosen].mean(axis=0))


@STRATEGIES.register("multikrum", MultiKrumConfig)
class MultiKrum(Krum):
    def __init__(self, cfg: MultiKrumConfig):
        if cfg.m is not None and cfg.m < 1:
            raise FedmmError(f"strategy.m must be at least 1 (got {cfg.m})")
        super().__init__(cfg)

    def keep(self, n: int, f: int) -> int:
        return self.cfg.m if self.cfg.m is not None else max(1, n - f)
