"""FedProx (Li et al., 2020): clients add (mu / 2) * ||w - w_global||^2 to their loss, which limits how far skewed
clients drift from the global model in one round. The server side is FedAvg; the term lives in the client's
training loop (`prox_mu` in the client config; see fedmm.train.loop).

fedmm's clients use AdamW, which divides each gradient by its running magnitude. Where the loss gradient of a
parameter is smaller than mu * (w - w_global), the update then points back to the global value at full step size,
which freezes that parameter: mu values tuned for SGD (0.01-1) stall training here, hence the default 0.001."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedmm.errors import FedmmError
from fedmm.fl.strategy.base import STRATEGIES
from fedmm.fl.strategy.fedavg import FedAvg


@dataclass
class FedProxConfig:
    name: str = "fedprox"
    mu: float = 0.001  # small: AdamW normalises gradients, so a larger pull can outweigh the loss (see README)


@STRATEGIES.register("fedprox", FedProxConfig)
class FedProx(FedAvg):
    def __init__(self, cfg: FedProxConfig):
        if cfg.mu < 0:
            raise FedmmError(f"strategy.mu must be >= 0 (got {cfg.mu})")
        super().__init__(cfg)

    def configure(self, rnd: int, client_ids: list[int], defaults: dict[str, Any]) -> dict[int, dict[str, Any]]:
        return {cid: {**defaults, "prox_mu": float(self.cfg.mu)} for cid in client_ids}
