"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization", Algorithm 1).

Each client k adds a dynamic regulariser to its loss, so that at a fixed point of the federation its local optimum
is the global one even when the sites' data differ:

    R_k(w) = L_k(w) - <g_k, w> + (alpha / 2) * ||w - w_global||^2

g_k is the site's own state, the gradient of L_k at its last local solution; it starts at 0 and after each round
becomes g_k - alpha * (w_k - w_global). It enters training as its gradient, -g_k + alpha * (w - w_global), added
before every optimizer step to the trained parameters' gradients (a parameter without a gradient, a missing
modality's encoder, is left alone), and it is kept where the client runs (fedmm.client.state, per round, so resume
is exact); it never travels. The server keeps h (0 at first):

    h  <- h - alpha * (1 / m) * sum_{k sampled} (w_k - w_global)      (m: all the federation's clients)
    w' <- (1 / |sampled|) * sum_{k sampled} w_k - h / alpha

Conventions: the paper's unweighted mean over the sampled clients and one alpha for every client (the authors' code
also divides alpha by each client's relative data size: not done here); a key a client did not send counts as
its global value (no change), as under FedAvg. Running statistics (BatchNorm buffers) take FedAvg's mean and no h.
AdamW (fedmm's default optimizer) normalises the regulariser's gradient like any other: alpha values from SGD
papers (0.01 to 0.1) pull harder there, as FedProx's mu does (see fedprox.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy
from fedmm.fl.strategy.fedavg import stepped_keys, weighted_average
from fedmm.fl.update import Update
from fedmm.options import opt
from fedmm.params import Params

if TYPE_CHECKING:
    import torch

STATE = "feddyn"  # the ClientState kind of g_k


def feddyn_step(
    global_params: Params,
    updates: Iterable[tuple[Params, float]],
    h: dict[str, np.ndarray],
    alpha: float,
    num_clients: int,
    stat_keys=frozenset(),
) -> tuple[Params, dict[str, np.ndarray]]:
    """(w', h') from (params_k, examples n_k) per sampled client and the server's h (module docstring); float64
    inside. `h` is not changed in place."""
    updates = list(updates)
    if not updates:
        raise ValueError("FedDyn needs at least one update")
    moved = stepped_keys(global_params, stat_keys)
    out = weighted_average(global_params, updates)  # the statistics' mean; the moved keys are replaced below
    h_new = {}
    for k in moved:
        w = global_params[k].astype(np.float64)
        drift = sum(params[k].astype(np.float64) - w for params, _ in updates if k in params)
        h_new[k] = h.get(k, np.zeros_like(w)) - alpha * drift / num_clients
        mean = w + drift / len(updates)
        out[k] = (mean - h_new[k] / alpha).astype(global_params[k].dtype)
    return out, h_new


@dataclass
class FedDynConfig:
    name: str = opt("feddyn", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    alpha: float = opt(0.01, "the dynamic regulariser's weight (alpha in Acar et al.); > 0")

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise FedmmError(f"strategy.alpha must be > 0 (got {self.alpha})")


class DynamicRegulariser(ClientHook):
    """Adds -g_k + alpha * (w - w_global) to each trained parameter's gradient; then updates and keeps g_k."""

    def before_training(self, run: LocalRound) -> None:
        import torch  # here, not at the top: the configuration imports this module without torch

        self.alpha = float(self.options["feddyn_alpha"])
        self.named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
        self.anchor = [p.detach().clone() for _, p in self.named]
        kept = run.load_state(STATE) or {}
        self.g = [
            torch.as_tensor(kept[n], dtype=p.dtype, device=p.device) if n in kept else torch.zeros_like(p)
            for n, p in self.named
        ]

    def on_step(self, params: list[torch.nn.Parameter]) -> None:
        for p, a, g in zip(params, self.anchor, self.g):
            if p.grad is not None:
                p.grad.add_(p.detach() - a, alpha=self.alpha).sub_(g)

    def after_training(self, run: LocalRound) -> None:
        new = {}
        for (n, p), a, g in zip(self.named, self.anchor, self.g):
            new[n] = (g - self.alpha * (p.detach() - a)).cpu().numpy()
        run.save_state(STATE, new)


@STRATEGIES.register("feddyn", FedDynConfig)
class FedDyn(Strategy):
    client_hook = DynamicRegulariser

    def __init__(self, cfg: FedDynConfig):
        super().__init__(cfg)
        self.h: dict[str, np.ndarray] = {}

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        return self.ask(client_ids, base, feddyn_alpha=float(self.cfg.alpha))

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        pairs = ((u.params, float(u.num_examples)) for u in updates)
        m = self.federation_size()
        out, h = feddyn_step(global_params, pairs, self.h, float(self.cfg.alpha), m, self.ctx.stat_keys)
        if not all(np.isfinite(v).all() for v in h.values()):
            raise ValueError(f"round {rnd}: non-finite FedDyn state h; it is left as it was")
        self.h = h
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"h": dict(self.h)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.h = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("h", {}).items()}
