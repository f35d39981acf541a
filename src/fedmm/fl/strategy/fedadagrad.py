"""FedAdagrad: the server applies Adagrad to the clients' averaged pseudo-gradient (update rule in fedopt.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig


@dataclass
class FedAdagradConfig(FedOptConfig):
    name: str = "fedadagrad"


@STRATEGIES.register("fedadagrad", FedAdagradConfig)
class FedAdagrad(FedOpt):
    kind = "adagrad"
