"""A federated client: global parameters in, an Update out.

`ClientTrainer` owns one model instance and reuses it for every client it serves (load global -> train -> extract),
which is what lets one process simulate hundreds of clients and keeps a deployed client's model warm across rounds.
"""
from __future__ import annotations

from typing import Any

import torch

from fedmm.backends.base import Backend, get_params, set_params
from fedmm.data.dataset import MultimodalDataset
from fedmm.fl.params import Update, params_from_bytes
from fedmm.train.loop import train_epochs


def client_seed(seed: int, rnd: int, cid: int) -> int:
    """The seed of one client's local training in one round (independent of which process runs it)."""
    return (seed * 1_000_003 + rnd * 10_007 + cid) % (2**31 - 1)


class ClientTrainer:
    def __init__(self, backend: Backend, model: torch.nn.Module, progress: bool = True):
        self.backend = backend
        self.model = model
        self.progress = progress

    def fit(self, cid: int, data: MultimodalDataset, payload: bytes, config: dict[str, Any]) -> Update:
        set_params(self.model, params_from_bytes(payload))
        stats = train_epochs(self.model, self.backend, data, epochs=int(config["local_epochs"]),
                             batch_size=int(config["batch_size"]), lr=float(config["lr"]),
                             weight_decay=float(config["weight_decay"]),
                             seed=client_seed(int(config["seed"]), int(config["round"]), cid),
                             desc=f"client {cid}", progress=self.progress)
        keys = self.backend.client_keys(self.model, data.modalities)
        return Update(client_id=cid, params=get_params(self.model, keys), num_examples=len(data),
                      metrics={"train_loss": stats["train_loss"], "seconds": stats["seconds"]},
                      modalities=data.modalities)

    def fit_bytes(self, cid: int, data: MultimodalDataset, payload: bytes, config: dict[str, Any]) -> bytes:
        return self.fit(cid, data, payload, config).to_bytes()
