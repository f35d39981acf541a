"""FedAvgM (Hsu et al., 2019): server momentum on the clients' averaged pseudo-gradient (rule in fedopt.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt
from fedmm.options import opt


@dataclass
class FedAvgMConfig:
    name: str = opt("fedavgm", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    server_lr: float = opt(1.0, "the server's step size on the momentum (1.0 = FedAvg's step)")
    momentum: float = opt(0.9, "server momentum beta (Hsu et al. 2019)")


@STRATEGIES.register("fedavgm", FedAvgMConfig)
class FedAvgM(FedOpt):
    kind = "momentum"
