"""A federated client: global parameters in, an Update out.

`ClientTrainer` owns one model instance and reuses it for every client it serves (load global -> train -> extract),
which is what lets one process simulate hundreds of clients and keeps a deployed client's model warm across rounds.

What the client does beyond training is asked for in its round config by the strategy: `prox_mu` (FedProx) and
`client_stats` (FedMAP: the client scores itself on its own validation rows, or, when it has none, on a held-out
`val_fraction` of its data, and reports scores and data statistics). `pos_weight` (a multilabel task's option)
weights the loss by the client's own label frequencies: a site knows its own data, not the federation's.
`compression` asks for a compressed update (the delta, with the client's error-feedback residual, `ClientState`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from fedmm.backends.base import Backend, get_params, set_params
from fedmm.data.dataset import MultimodalDataset
from fedmm.client.state import ClientState
from fedmm.fl.compression import compress_update
from fedmm.fl.params import Update, params_from_bytes
from fedmm.train.loop import evaluate, positive_weights, train_epochs


def client_seed(seed: int, rnd: int, cid: int) -> int:
    """The seed of one client's local training in one round (independent of which process runs it)."""
    return (seed * 1_000_003 + rnd * 10_007 + cid) % (2**31 - 1)


def local_split(data: MultimodalDataset, fraction: float, seed: int, cid: int
                ) -> tuple[MultimodalDataset, MultimodalDataset | None]:
    """(train, val): a fixed `fraction` of the client's examples held out for its own scoring, the same in every
    round. Clients too small to spare two examples keep everything for training and report no scores."""
    n_val = int(round(fraction * len(data)))
    if n_val < 1 or len(data) - n_val < 2:
        return data, None
    order = np.random.default_rng([seed, cid, 11]).permutation(len(data))
    return data.subset(np.sort(order[n_val:])), data.subset(np.sort(order[:n_val]))


def label_statistics(data: MultimodalDataset) -> dict[str, float]:
    """diversity: entropy of the label distribution over log(number of labels), 1 = uniform;
    imbalance_ratio: the most frequent label's share, from 1 / labels (balanced) to 1 (a single label)."""
    counts = data.label_counts().astype(np.float64)
    if counts.sum() <= 0 or len(counts) < 2:
        return {"diversity": 0.0, "imbalance_ratio": 1.0}
    p = counts / counts.sum()
    nz = p[p > 0]
    return {"diversity": float(-(nz * np.log(nz)).sum() / np.log(len(p))), "imbalance_ratio": float(p.max())}


class ClientTrainer:
    def __init__(self, backend: Backend, model: torch.nn.Module, progress: bool = True,
                 state_dir: Optional[Path] = None):
        self.backend = backend
        self.model = model
        self.progress = progress
        self.state = ClientState(state_dir)  # where this process keeps its clients' state (None: in memory)

    def _score(self, data: MultimodalDataset, metric: str, batch_size: int) -> dict[str, float]:
        return evaluate(self.model, self.backend, data, (metric,), batch_size=batch_size)

    def fit(self, cid: int, data: MultimodalDataset, payload: bytes, config: dict[str, Any],
            val: MultimodalDataset | None = None) -> Update:
        """One round of local training. `val` is the site's own validation data, when it has some."""
        received = params_from_bytes(payload)
        set_params(self.model, received)
        stats_wanted = bool(config.get("client_stats", False))
        train = data
        metrics: dict[str, float] = {}
        if stats_wanted:
            if val is None:
                train, val = local_split(data, float(config["val_fraction"]), int(config["seed"]), cid)
            metric, bs = str(config["score_metric"]), int(config["batch_size"])
            if val is not None:
                metrics["f1_before"] = self._score(val, metric, bs)[metric]
        stats = train_epochs(self.model, self.backend, train, epochs=int(config["local_epochs"]),
                             batch_size=int(config["batch_size"]), lr=float(config["lr"]),
                             weight_decay=float(config["weight_decay"]),
                             seed=client_seed(int(config["seed"]), int(config["round"]), cid),
                             desc=f"client {cid}", progress=self.progress,
                             prox_mu=float(config.get("prox_mu", 0.0)), track_grad_norm=stats_wanted,
                             pos_weight=positive_weights(train.labels) if config.get("pos_weight") else None,
                             grad_accum_steps=int(config.get("grad_accum_steps", 1)),
                             precision=str(config.get("precision", "fp32")))
        metrics.update(train_loss=stats["train_loss"], seconds=stats["seconds"])
        if stats_wanted:
            metrics["grad_norm"] = stats["grad_norm"]
            metrics.update(label_statistics(train))
            if val is not None:
                after = self._score(val, metric, bs)
                metrics.update(p_k=after[metric], c_k=after[metric] - metrics["f1_before"], val_loss=after["loss"])
        keys = self.backend.client_keys(self.model, data.modalities)
        params, compression = get_params(self.model, keys), {}
        kind = str(config.get("compression", "none"))
        if kind != "none":
            feedback, rnd = bool(config.get("error_feedback", True)), int(config["round"])
            residual = self.state.load_residual(cid, rnd) if feedback else None
            params, compression, residual = compress_update(params, received, residual, kind,
                                                            int(config.get("compression_block", 256)))
            if feedback:
                self.state.save_residual(cid, rnd, residual)
        return Update(client_id=cid, params=params, num_examples=len(train), metrics=metrics,
                      modalities=data.modalities, compression=compression)

    def fit_bytes(self, cid: int, data: MultimodalDataset, payload: bytes, config: dict[str, Any],
                  val: MultimodalDataset | None = None) -> bytes:
        return self.fit(cid, data, payload, config, val).to_bytes()
