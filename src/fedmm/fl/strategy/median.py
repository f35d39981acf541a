"""Coordinate-wise median (Yin et al., 2018): robust to a minority of clients that send corrupted or extreme updates.

Unweighted by design: weighting by example counts would let one client that claims many examples dominate again.
Each key is taken over the clients that sent it (a client missing a modality does not vote on its encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from fedmm.fl.update import Update

from fedmm.params import Params
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.options import opt


def coordinatewise(global_params: Params, updates: list[Params], reduce: Callable[[np.ndarray], np.ndarray]) -> Params:
    """Apply `reduce` over axis 0 of the stacked values of each key, among the updates that hold that key. Values
    must be finite (the server's validation sees to it): sorting puts NaN last, so a NaN would be taken for the
    largest value and could surface in the result; a direct call with one raises ValueError instead."""
    out = dict(global_params)
    for k, g in global_params.items():
        values = [p[k] for p in updates if k in p]
        if values:
            stack = np.stack(values).astype(np.float64)
            if not np.isfinite(stack).all():
                raise ValueError(f"non-finite client values in {k}; validate updates first (fedmm.fl.validation)")
            out[k] = reduce(stack).astype(g.dtype)
    return out


def median(global_params: Params, updates: list[Params]) -> Params:
    return coordinatewise(global_params, updates, lambda s: np.median(s, axis=0))


@dataclass
class MedianConfig:
    name: str = opt("median", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("median", MedianConfig)
class Median(Strategy):
    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        return median(global_params, [u.params for u in updates])
