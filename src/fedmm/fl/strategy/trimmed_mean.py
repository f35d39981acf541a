"""Coordinate-wise trimmed mean (Yin et al., 2018): per coordinate, drop the `beta` fraction of largest and of
smallest client values, and average the rest. Between the mean (beta=0) and the median (beta near 0.5).

How many values go from each end, of n: floor(beta * n), but at least one whenever beta > 0 and n >= 3 (so the
default beta=0.1 trims with 5 clients, where floor(0.5) = 0 would trim nothing and one x1e6 update would move the
model as far as under FedAvg), and at most (n - 1) // 2 (at least one value stays)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.update import Update
from fedmm.params import Params
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.fl.strategy.median import coordinatewise
from fedmm.options import opt


def trim_count(n: int, beta: float) -> int:
    """Values dropped from each end of n (see the module docstring)."""
    cut = int(math.floor(beta * n))
    if beta > 0 and n >= 3:
        cut = max(cut, 1)
    return min(cut, (n - 1) // 2)


def trimmed_mean(global_params: Params, updates: list[Params], beta: float) -> Params:
    def reduce(stack: np.ndarray) -> np.ndarray:
        n = stack.shape[0]
        cut = trim_count(n, beta)
        return np.sort(stack, axis=0)[cut : n - cut].mean(axis=0)

    return coordinatewise(global_params, updates, reduce)


@dataclass
class TrimmedMeanConfig:
    name: str = opt("trimmed_mean", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    beta: float = opt(0.1, "fraction trimmed at each end, per coordinate")


@STRATEGIES.register("trimmed_mean", TrimmedMeanConfig)
class TrimmedMean(Strategy):
    def __init__(self, cfg: TrimmedMeanConfig):
        if not 0 <= cfg.beta < 0.5:
            raise FedmmError(f"strategy.beta must be in [0, 0.5) (got {cfg.beta})")
        super().__init__(cfg)

    def aggregate(self, rnd: int, global_params: Params, updates: list[Update]) -> Params:
        return trimmed_mean(global_params, [u.params for u in updates], self.cfg.beta)
