"""Simulated Byzantine clients (`attack=...`): what a misbehaving client does to its update after local training and
before it is serialised, so the attack travels the real wire path of every runtime and meets the server's checks.

    nan, inf    one value of the first floating tensor becomes NaN / +inf
    scale       the delta (update - global) multiplied by `scale` (1e6 by default)
    sign_flip   the delta negated, and multiplied by `scale` when scale > 0
    gaussian    the update is the global model plus N(0, std^2) noise (the training is thrown away)
    shape       the first tensor with a leading dimension > 1 sent as its first row only: a wrong shape that numpy
                would broadcast
    label_flip  (before training) the client trains on labels permuted by one class: c -> (c + 1) mod C
"""

from __future__ import annotations

import numpy as np

from fedmm.config.schema import AttackConfig
from fedmm.data.dataset import MultimodalDataset
from fedmm.params import Params


def attacking(cfg: AttackConfig | None, cid: int, rnd: int) -> bool:
    return cfg is not None and cfg.name != "none" and cid in cfg.clients and rnd >= cfg.start_round


def flip_labels(data: MultimodalDataset) -> MultimodalDataset:
    """The same examples with every class label moved to the next class (multilabel: the label columns rolled)."""
    from dataclasses import replace

    labels = np.roll(data.labels, 1, axis=1) if data.multilabel else (data.labels + 1) % data.num_labels
    return replace(data, labels=labels.astype(data.labels.dtype))


def attack_update(cfg: AttackConfig, trained: Params, received: Params, seed: int) -> Params:
    """The update a Byzantine client sends instead of `trained` (see the module docstring)."""
    out = {k: v.copy() for k, v in trained.items()}
    floats = [k for k, v in out.items() if np.issubdtype(v.dtype, np.floating) and v.size]
    if cfg.name in ("nan", "inf") and floats:
        out[floats[0]].reshape(-1)[0] = np.nan if cfg.name == "nan" else np.inf
    elif cfg.name in ("scale", "sign_flip"):
        factor = cfg.scale if cfg.name == "scale" else -(cfg.scale if cfg.scale > 0 else 1.0)
        for k in floats:
            g = received[k].astype(np.float64)
            out[k] = (g + factor * (trained[k].astype(np.float64) - g)).astype(trained[k].dtype)
    elif cfg.name == "gaussian":
        rng = np.random.default_rng([seed, 7919])
        for k in floats:
            out[k] = (received[k] + rng.normal(0.0, cfg.std, size=received[k].shape)).astype(trained[k].dtype)
    elif cfg.name == "shape":
        k = next((k for k in floats if out[k].ndim >= 1 and out[k].shape[0] > 1), None)
        if k is not None:
            out[k] = out[k][:1].copy()
    return out
