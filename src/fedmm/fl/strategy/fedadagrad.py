"""FedAdagrad: the server applies Adagrad to the clients' averaged pseudo-gradient (update rule in fedopt.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig
from fedmm.options import opt


@dataclass
class FedAdagradConfig(FedOptConfig):
    name: str = opt("fedadagrad", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("fedadagrad", FedAdagradConfig)
class FedAdagrad(FedOpt):
    kind = "adagrad"
