"""FedAvgM (Hsu et al., 2019): server momentum on the clients' averaged pseudo-gradient (rule in fedopt.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt


@dataclass
class FedAvgMConfig:
    name: str = "fedavgm"
    server_lr: float = 1.0
    momentum: float = 0.9


@STRATEGIES.register("fedavgm", FedAvgMConfig)
class FedAvgM(FedOpt):
    kind = "momentum"
