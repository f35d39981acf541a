"""Aggregation that respects missing modalities.

A parameter that belongs to one modality's encoder (the backend declares which) is averaged, weighted by examples,
over only the clients that have that modality; shared parameters (fusion, head, decoder) over all. Clients that lack
a modality neither train nor send that encoder, so "the clients that sent the key" is exactly "the clients that
have the modality": FedAvg instead counts them with the stale global value and slows the encoder down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from fedmm.fl.update import Update

from fedmm.params import Params
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.fl.strategy.fedavg import masked_weighted_average
from fedmm.options import opt


@dataclass
class ModalityAvgConfig:
    name: str = opt("modality_avg", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("modality_avg", ModalityAvgConfig)
class ModalityAvg(Strategy):
    streaming = True

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        return masked_weighted_average(global_params, ((u.params, float(u.num_examples)) for u in updates))
