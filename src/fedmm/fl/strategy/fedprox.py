"""FedProx (Li et al., 2020): clients add (mu / 2) * ||w - w_global||^2 to their loss, which limits how far skewed
clients drift from the global model in one round. The server side is FedAvg; the client side is `ProximalTerm`
below, which the client runs around its local training (the strategy asks for it with `prox_mu`).

The term enters as its gradient, mu * (w - w_global), added to every trained parameter's gradient before each
optimizer step; parameters without a gradient (a missing modality's encoder) are not pulled.

fedmm's clients use AdamW, which divides each gradient by its running magnitude. Where the loss gradient of a
parameter is smaller than mu * (w - w_global), the update then points back to the global value at full step size,
which freezes that parameter: mu values tuned for SGD (0.01-1) stall training here, hence the default 0.001."""

from __future__ import annotations

from dataclasses import dataclass

from typing import TYPE_CHECKING

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound
from fedmm.fl.strategy.fedavg import FedAvg
from fedmm.options import opt

if TYPE_CHECKING:
    import torch


@dataclass
class FedProxConfig:
    name: str = opt("fedprox", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    mu: float = opt(0.001, "small: AdamW normalises gradients, so a larger pull can outweigh the loss (see README)")


class ProximalTerm(ClientHook):
    """Adds mu * (w - w_global) to each gradient, w_global being the parameters the round started from."""

    def before_training(self, run: LocalRound) -> None:
        self.mu = float(self.options["prox_mu"])
        self.anchor = [p.detach().clone() for p in run.model.parameters() if p.requires_grad]

    def on_step(self, params: list[torch.nn.Parameter]) -> None:
        import torch  # here, not at the top: the configuration imports this module without torch

        pairs = [(p, a) for p, a in zip(params, self.anchor) if p.grad is not None]
        if self.mu > 0 and pairs:
            torch._foreach_add_(
                [p.grad for p, _ in pairs],
                torch._foreach_sub([p.detach() for p, _ in pairs], [a for _, a in pairs]),
                alpha=self.mu,
            )


@STRATEGIES.register("fedprox", FedProxConfig)
class FedProx(FedAvg):
    client_hook = ProximalTerm

    def __init__(self, cfg: FedProxConfig):
        if cfg.mu < 0:
            raise FedmmError(f"strategy.mu must be >= 0 (got {cfg.mu})")
        super().__init__(cfg)

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        return self.ask(client_ids, base, prox_mu=float(self.cfg.mu))
