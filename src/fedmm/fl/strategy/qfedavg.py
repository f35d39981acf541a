"""q-FFL, as q-FedAvg (Li et al., ICLR 2020, "Fair Resource Allocation in Federated Learning", Algorithm 3).

FedAvg minimises the clients' mean loss, so a site the model serves badly can stay bad. q-FFL minimises
sum_k F_k^(q+1) / (q+1) instead: the larger q, the more a client with a high loss F_k steers the step. Each client
k trains as usual and reports F_k, the loss of the global model it received on its own training data (measured
before training, as in the paper); the server turns each update into a scaled gradient estimate and takes one step
whose size comes from an estimate of the Lipschitz constant, L = 1 / lr:

    g_k     = L * (w - w_k)
    Delta_k = F_k^q * g_k
    h_k     = q * F_k^(q-1) * ||g_k||^2 + L * F_k^q
    w'      = w - sum_k Delta_k / sum_k h_k

Conventions, checked against Flower's `QFedAvg` (tests/test_flower_reference.py): F_k + 1e-10 where a power is
taken, as Flower; clients count alike (no example weights, as in the paper, which samples clients in proportion to
their data); q = 0 is the unweighted mean of the clients' models. L is 1 / `client_lr`, Flower's
`client_learning_rate`; by default 1 / the round's lr, which follows fedmm's schedule.

L = 1 / lr assumes plain SGD, where w - w_k is lr times the summed gradients. AdamW (fedmm's default optimizer)
moves every coordinate by about lr per step whatever its gradient, so ||g_k|| is overstated, the h_k term with it
dominates and the step shrinks to a small fraction of the clients' mean change (measured on the tiny fusion model:
eval accuracy 0.03 after 3 rounds against FedAvg's 0.34). Use `optimizer=sgd` (as in the paper), or set
`strategy.client_lr` larger to take longer steps; the run warns otherwise. A client that did not send a key (a missing
modality) contributes g_k = 0 there. Running statistics (BatchNorm buffers) are not parameters: they take the
example-weighted mean, as under FedOpt. The update depends on each client separately, so client-level DP and secure
aggregation (which hand the strategy only a mean) refuse it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.strategy.base import STRATEGIES, ClientHook, LocalRound, Strategy
from fedmm.fl.strategy.fedavg import stepped_keys, weighted_average
from fedmm.fl.update import Update
from fedmm.options import opt
from fedmm.params import Params

log = logging.getLogger(__name__)

LOSS = "qffl_loss"  # the metric each client reports: its loss under the model it received, before training
EPS = 1e-10  # added to F_k before a power, as Flower does (a loss of exactly 0 would make F_k^(q-1) infinite)


def qffl_step(
    global_params: Params, updates: Iterable[tuple[Params, float, float]], q: float, lr: float, stat_keys=frozenset()
) -> Params:
    """One q-FedAvg step from (params_k, loss F_k, examples n_k) per client (module docstring); float64 inside,
    each tensor cast back to the global's dtype."""
    lip = 1.0 / lr
    moved = stepped_keys(global_params, stat_keys)
    w = {k: global_params[k].astype(np.float64) for k in moved}
    delta = {k: np.zeros_like(v) for k, v in w.items()}
    h_sum, stats = 0.0, []
    for params, loss, n in updates:
        g = {k: lip * (w[k] - params[k].astype(np.float64)) for k in moved if k in params}
        f = loss + EPS
        for k, v in g.items():
            delta[k] += f**q * v
        h_sum += q * f ** (q - 1) * sum(float(np.sum(v * v)) for v in g.values()) + lip * f**q
        stats.append((params, n))
    if not stats:
        raise ValueError("q-FedAvg needs at least one update")
    out = weighted_average(global_params, stats) if len(moved) < len(global_params) else dict(global_params)
    for k in moved:
        out[k] = (w[k] - delta[k] / h_sum).astype(global_params[k].dtype)
    return out


@dataclass
class QFedAvgConfig:
    name: str = opt("qfedavg", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    q: float = opt(0.1, "fairness: 0 = the clients' unweighted mean; larger q weighs high-loss clients more")
    client_lr: Optional[float] = opt(
        None, "L = 1 / client_lr (Flower's client_learning_rate); null: the round's lr. Assumes optimizer=sgd"
    )

    def __post_init__(self) -> None:
        if not self.q >= 0:
            raise FedmmError(f"strategy.q must be >= 0 (got {self.q})")
        if self.client_lr is not None and not self.client_lr > 0:
            raise FedmmError(f"strategy.client_lr must be > 0 or null (got {self.client_lr})")


class ReportLoss(ClientHook):
    """Reports F_k: the received global model's loss on this client's training data, before it trains."""

    def before_training(self, run: LocalRound) -> None:
        metric = run.instructions.eval_metrics[0] if run.instructions.eval_metrics else "accuracy"
        run.metrics[LOSS] = float(run.score(run.train, metric)["loss"])


@STRATEGIES.register("qfedavg", QFedAvgConfig)
class QFedAvg(Strategy):
    streaming = True
    client_hook = ReportLoss

    def __init__(self, cfg: QFedAvgConfig):
        super().__init__(cfg)
        self.lr: Optional[float] = None

    def refuses(self, update: Update) -> Optional[str]:
        loss = update.metrics.get(LOSS)
        return None if isinstance(loss, (int, float)) and loss >= 0 else f"reports no {LOSS} >= 0, which q-FFL needs"

    def configure(self, rnd: int, client_ids: list[int], base: FitInstructions) -> dict[int, FitInstructions]:
        if self.cfg.client_lr is None and base.optimizer != "sgd" and self.lr is None:
            log.warning(
                "q-FFL estimates L = 1 / lr for SGD; with optimizer=%s its steps stay small: use optimizer=sgd or "
                "set strategy.client_lr",
                base.optimizer,
            )
        self.lr = base.lr if self.cfg.client_lr is None else float(self.cfg.client_lr)
        return super().configure(rnd, client_ids, base)

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        if self.lr is None:
            raise ValueError("q-FedAvg aggregates only after configure (it needs the round's lr)")
        triples = ((u.params, float(u.metrics[LOSS]), float(u.num_examples)) for u in updates)
        return qffl_step(global_params, triples, float(self.cfg.q), self.lr, self.ctx.stat_keys)
