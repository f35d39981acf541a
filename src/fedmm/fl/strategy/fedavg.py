"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.update import Update

from fedmm.params import Params
from fedmm.fl.strategy.base import STRATEGIES, Strategy
from fedmm.options import opt


def weighted_average(global_params: Params, updates: Iterable[tuple[Params, float]]) -> Params:
    """sum_k w_k * theta_k / sum_k w_k for every key of `global_params`.

    A client that did not send a key (it lacks that modality, so it could not train it) counts with the global value
    it received: exactly what classic FedAvg computes when such a client sends its unchanged copy, without the bytes.
    A running float64 sum over an iterable, so the server can feed it updates as they arrive and memory does not
    grow with the number of clients. Each product w_k * theta_k is taken in float64 too: in the update's own dtype
    a float16 value times a few thousand examples overflows (20.0 x 5,000 > 65,504).
    """
    acc = {k: np.zeros(v.shape, dtype=np.float64) for k, v in global_params.items()}
    total = 0.0
    for params, w in updates:
        total += w
        for k in acc:
            acc[k] += np.multiply(w, params.get(k, global_params[k]), dtype=np.float64)
    if total <= 0:
        raise ValueError("aggregation weights must sum to a positive number")
    return {k: (v / total).astype(global_params[k].dtype) for k, v in acc.items()}


def stepped_keys(global_params: Params, stat_keys: frozenset[str] = frozenset()) -> list[str]:
    """The keys a server rule steps: floating tensors that are not running statistics (BatchNorm buffers). The
    others (statistics, integer counters) are not parameters and take FedAvg's mean."""
    return [k for k, v in global_params.items() if k not in stat_keys and np.issubdtype(v.dtype, np.floating)]


def masked_weighted_average(global_params: Params, updates: Iterable[tuple[Params, float]]) -> Params:
    """For every key, sum_k w_k * theta_k / sum_k w_k over only the clients that sent that key; a key nobody sent
    keeps its global value.

    This is what a parameter that belongs to one modality needs: a client without images never trained the image
    encoder, so its (stale) copy must not pull the average back toward the old global value. A running sum, like
    `weighted_average`.
    """
    acc: dict[str, np.ndarray] = {}
    total: dict[str, float] = {}
    for params, w in updates:
        for k, v in params.items():
            if k not in acc:
                acc[k], total[k] = np.zeros(v.shape, dtype=np.float64), 0.0
            acc[k] += np.multiply(w, v, dtype=np.float64)
            total[k] += w
    out = dict(global_params)
    for k, v in acc.items():
        if total[k] <= 0:
            raise ValueError(f"aggregation weights of {k} must sum to a positive number")
        out[k] = (v / total[k]).astype(global_params[k].dtype)
    return out


WEIGHT_BY = ("examples", "steps")


@dataclass
class FedAvgConfig:
    name: str = opt("fedavg", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    weight_by: str = opt(
        "examples",
        "examples (McMahan et al.) | steps: the batches each client trained on this round (local epochs x "
        "batches), as NVFlare's FedAvg weighs by NUM_STEPS_CURRENT_ROUND (the FedUMM code)",
    )

    def __post_init__(self) -> None:  # checked when the configuration is composed, before anything runs
        if self.weight_by not in WEIGHT_BY:
            raise FedmmError(f"strategy.weight_by must be examples or steps (got '{self.weight_by}')")


@STRATEGIES.register("fedavg", FedAvgConfig)
class FedAvg(Strategy):
    streaming = True
    averages = True

    @property
    def reported(self) -> tuple[str, ...]:
        return ("batches",) if getattr(self.cfg, "weight_by", "examples") == "steps" else ()

    def weight(self, u: Update) -> float:
        """A client's share: its example count, or with weight_by=steps the batches it trained on."""
        return float(u.metrics["batches"]) if self.reported else float(u.num_examples)

    def aggregate(self, rnd: int, global_params: Params, updates: Iterable[Update]) -> Params:
        return weighted_average(global_params, ((u.params, self.weight(u)) for u in updates))
