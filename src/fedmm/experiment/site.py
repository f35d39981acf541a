"""One client of an experiment on its own, for runtimes whose clients run apart from the server (a Flower
SuperNode, an NVFlare site)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from fedmm.backends.base import Backend
from fedmm.config import Settings
from fedmm.data.dataset import MultimodalDataset
from fedmm.errors import SiteRefusal
from fedmm.experiment.assemble import assemble


@dataclass
class Site:
    """What one client holds when it runs apart from the server."""

    backend: Backend
    model: torch.nn.Module
    train: MultimodalDataset
    val: Optional[MultimodalDataset]
    test: Optional[MultimodalDataset]  # the site's own test data (client_eval)


def build_site(settings: Settings, cid: int) -> Site:
    """Client `cid`: its share of the data exactly as the embedded runtime gives it, and the model with the
    strategy's travelling keys trainable, so that both runtimes compute the same update for the same global
    parameters."""
    parts = assemble(settings, "site")
    if not 0 <= cid < len(parts.clients):
        n = len(parts.clients)
        raise SiteRefusal(
            "partition_id",
            f"partition-id {cid} is out of range: this experiment has {n} clients (0..{n - 1}); fix "
            f"the site's partition-id (Flower: the SuperNode's --node-config, NVFlare: the job's "
            f"--partition-id)",
        )
    return Site(
        backend=parts.backend,
        model=parts.model,
        train=parts.clients[cid],
        val=parts.client_val[cid],
        test=parts.client_test[cid],
    )
