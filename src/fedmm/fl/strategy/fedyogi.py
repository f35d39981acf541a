"""FedYogi: the server applies Yogi to the clients' averaged pseudo-gradient (see fedopt.py for the update rule)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig


@dataclass
class FedYogiConfig(FedOptConfig):
    name: str = "fedyogi"


@STRATEGIES.register("fedyogi", FedYogiConfig)
class FedYogi(FedOpt):
    kind = "yogi"
