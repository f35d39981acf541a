"""FedAdam: the server applies Adam to the clients' averaged pseudo-gradient (see fedopt.py for the update rule)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig


@dataclass
class FedAdamConfig(FedOptConfig):
    name: str = "fedadam"


@STRATEGIES.register("fedadam", FedAdamConfig)
class FedAdam(FedOpt):
    kind = "adam"
