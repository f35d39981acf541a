"""FedAdam: the server applies Adam to the clients' averaged pseudo-gradient (see fedopt.py for the update rule)."""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedopt import FedOpt, FedOptConfig
from fedmm.options import opt


@dataclass
class FedAdamConfig(FedOptConfig):
    name: str = opt("fedadam", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@STRATEGIES.register("fedadam", FedAdamConfig)
class FedAdam(FedOpt):
    kind = "adam"
