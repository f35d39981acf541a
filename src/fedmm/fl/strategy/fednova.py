"""FedNova (Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous Federated
Optimization"): normalised averaging.

A client that takes more local steps moves further, so FedAvg's mean leans toward the sites with more data (or more
epochs) and converges to the optimum of a different objective. FedNova divides each client's change by its
normalising factor a_k, averages these per-step directions, and rescales by an effective step count:

    d_k     = (w - w_k) / a_k                      (w: the global model the round started from)
    tau_eff = sum_k p_k * a_k                      (p_k = n_k / sum_j n_j, this round's clients)
    w'      = w - tau_eff * sum_k p_k * d_k

a_k is ||a||_1 of the paper: the number of optimizer steps tau_k for plain local SGD (and for AdamW, fedmm's default,
where no closed form exists: the paper's experiments and its reference code normalise by steps there too), and for
SGD with momentum rho (fedmm's `optimizer=sgd`, rho = 0.9) sum_{t=1..tau} (1 - rho^t) / (1 - rho), the weight the
momentum buffer gives the steps' gradients in all (the reference code's `local_normalizing_vec`). When every client
takes the same number of steps, FedNova is FedAvg. Each client counts its own optimizer steps (`fednova_steps`).
Running statistics (BatchNorm buffers) take FedAvg's mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy
from fedmm.fl.strategy.fedavg import stepped_keys, weighted_average
from fedmm.fl.update import Update
from fedmm.options import opt
from fedmm.params import Params
from fedmm.train import SGD_MOMENTUM

STEPS = "fednova_steps"  # the optimizer steps a client took this round


def normalizing_factor(steps: float, momentum: float = 0.0) -> float:
    """||a||_1 for `steps` local steps: steps itself without momentum; with momentum rho, the sum over steps t of
    the momentum buffer's total weight 1 + rho + ... + rho^(t-1)."""
    if momentum == 0:
        return float(steps)
    t = np.arange(1, int(steps) + 1)
    return float(np.sum((1 - momentum**t) / (1 - momentum)))


def fednova_step(
    global_params: Params, updates: Iterable[tuple[Params, float, float]], stat_keys=frozenset()
) -> Params:
    """One FedNova step from (params_k, examples n_k, normalising factor a_k) per client (module docstring); float64
    inside. A key a client did not send counts as no change there (as under FedAvg)."""
    updates = list(updates)
    if not updates:
        raise ValueError("FedNova needs at least one update")
    total = sum(n for _, n, _ in updates)
    moved = stepped_keys(global_params, stat_keys)
    w = {k: global_params[k].astype(np.float64) for k in moved}
    direction = {k: np.zeros_like(v) for k, v in w.items()}
    tau_eff = 0.0
    for params, n, a in updates:
        p = n / total
        tau_eff += p * a
        for k in moved:
            if k in params:
                direction[k] += (p / a) * (w[k] - params[k].astype(np.float64))
    out = weighted_average(global_params, ((u, n) for u, n, _ in updates))
    for k in moved:
        out[k] = (w[k] - tau_eff * direction[k]).astype(global_params[k].dtype)
    return out


@dataclass
class FedNovaConfig:
    name: str = opt("fednova", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


class CountSteps(ClientHook):
    """Counts this round's optimizer steps (the loop calls `on_step` before each one) and reports them."""

    def before_training(self, run: LocalRound) -> None:
        self.steps = 0

    def on_step(self, params) -> None:
        self.steps += 1

    def after_training(self, run: LocalRound) -> None:
        run.metrics[STEPS] = float(self.steps)


@STRATEGIES.register("fednova", FedNovaConfig)
class FedNova(Strategy):
    client_hook = CountSteps

    def __init__(self, cfg: FedNovaConfig):
        super().__init__(cfg)
        self.momentum = 0.0

    @property
    def reported(self) -> tuple[str, ...]:
        return (STEPS,)

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        self.momentum = SGD_MOMENTUM if base.optimizer == "sgd" else 0.0
        return super().configure(rnd, client_ids, base)

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        triples = (
            (u.params, float(u.num_examples), normalizing_factor(u.metrics[STEPS], self.momentum)) for u in updates
        )
        return fednova_step(global_params, triples, self.ctx.stat_keys)
