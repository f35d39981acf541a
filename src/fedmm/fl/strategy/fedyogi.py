"""FedYogi: the server applies Yogi to the clients' averaged pseudo-gradient (see fedopt.py for the update rule)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig
from fedmm.options import opt


@dataclass
class FedYogiConfig(FedOptConfig):
    name: str = opt("fedyogi", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("fedyogi", FedYogiConfig)
class FedYogi(FedOpt):
    kind = "yogi"
