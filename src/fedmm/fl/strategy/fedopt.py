"""Server optimizers (Reddi et al., 2021, "Adaptive Federated Optimization"; Hsu et al., 2019 for FedAvgM).

The example-weighted average of the clients' parameters defines a pseudo-gradient `delta = average - global`, and
the server applies an optimizer step to it instead of jumping to the average. Momentum and adaptive step sizes
help most when clients' data are skewed, where plain averages zig-zag between rounds.

Running statistics (BatchNorm buffers) are not parameters: they take the plain average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from fedmm.fl.update import Update

from fedmm.params import Params
from fedmm.fl.strategy.base import Strategy
from fedmm.fl.strategy.fedavg import stepped_keys, weighted_average
from fedmm.options import opt


def momentum_step(
    x: np.ndarray, delta: np.ndarray, m: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvgM: m <- momentum * m + delta; x <- x + lr * m. With lr=1 and momentum=0 this is FedAvg."""
    m = momentum * m + delta
    return x + lr * m, m


def adaptive_step(
    kind: str,
    x: np.ndarray,
    delta: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FedAdagrad / FedYogi / FedAdam step (Algorithm 2 of Reddi et al.), without bias correction:

    m <- beta1 * m + (1 - beta1) * delta
    v <- v + delta^2                                   (adagrad)
    v <- v - (1 - beta2) * delta^2 * sign(v - delta^2) (yogi)
    v <- beta2 * v + (1 - beta2) * delta^2             (adam)
    x <- x + lr * m / (sqrt(v) + tau)
    """
    m = beta1 * m + (1 - beta1) * delta
    d2 = delta * delta
    if kind == "adagrad":
        v = v + d2
    elif kind == "yogi":
        v = v - (1 - beta2) * d2 * np.sign(v - d2)
    elif kind == "adam":
        v = beta2 * v + (1 - beta2) * d2
    else:
        raise ValueError(f"unknown adaptive optimizer '{kind}'")
    with np.errstate(invalid="ignore", over="ignore"):  # the caller refuses non-finite state
        return x + lr * m / (np.sqrt(v) + tau), m, v


@dataclass
class FedOptConfig:
    name: str = opt("fedadam", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    server_lr: float = opt(0.01, "the server optimizer's step size (eta in Reddi et al. 2021)")
    beta1: float = opt(0.9, "first-moment decay of the server optimizer (beta_1)")
    beta2: float = opt(0.99, "second-moment decay of the server optimizer (beta_2)")
    tau: float = opt(1e-3, "adaptivity: bounds the step where v is small; v starts at tau^2 as in the paper")


class FedOpt(Strategy):
    """Base of the server-optimizer strategies; `kind` is adam, yogi, adagrad or momentum."""

    kind = "adam"
    streaming = True
    averages = True

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        avg = weighted_average(global_params, ((u.params, float(u.num_examples)) for u in updates))
        out: Params = {}
        m_new: dict[str, np.ndarray] = {}
        v_new: dict[str, np.ndarray] = {}
        stepped = set(stepped_keys(global_params, self.ctx.stat_keys))
        for k, x0 in global_params.items():
            if k not in stepped:
                out[k] = avg[k]
                continue
            x = x0.astype(np.float64)
            delta = avg[k].astype(np.float64) - x
            m = self.m.get(k, np.zeros_like(x))
            if self.kind == "momentum":
                x, m_new[k] = momentum_step(x, delta, m, self.cfg.server_lr, self.cfg.momentum)
            else:
                v = self.v.get(k, np.full_like(x, self.cfg.tau**2))
                x, m_new[k], v_new[k] = adaptive_step(
                    self.kind, x, delta, m, v, self.cfg.server_lr, self.cfg.beta1, self.cfg.beta2, self.cfg.tau
                )
            out[k] = x.astype(x0.dtype)
        # The moments are kept only when finite: one bad round must not poison every later one.
        if all(np.isfinite(a).all() for a in (*m_new.values(), *v_new.values())):
            self.m.update(m_new)
            self.v.update(v_new)
        else:
            raise ValueError(f"round {rnd}: non-finite server optimizer state; the moments are left as they were")
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("m", {}).items()}
        self.v = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("v", {}).items()}
