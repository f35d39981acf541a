"""What a client sends back: its trained tensors (or their compressed delta), example count, metrics and modalities,
as one safetensors blob whose header carries the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedmm.params import Params, bytes_metadata, params_from_bytes, params_to_bytes


@dataclass
class Update:
    """What a client returns after local training."""

    client_id: int
    params: Params  # only the tensors this client trained (its modalities' + shared ones)
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    modalities: frozenset[str] = frozenset()  # the modalities the client really has
    extra: dict[str, Any] = field(default_factory=dict)  # strategy-specific, JSON-serialisable
    compression: dict[str, str] = field(default_factory=dict)  # set when `params` is a compressed delta

    def to_bytes(self) -> bytes:
        meta = dict(
            client_id=self.client_id,
            num_examples=self.num_examples,
            metrics=self.metrics,
            modalities=sorted(self.modalities),
            extra=self.extra,
        )
        return params_to_bytes(self.params, {"fedmm_update": json.dumps(meta), **self.compression})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Update":
        header = bytes_metadata(data)
        meta = json.loads(header.pop("fedmm_update"))
        return cls(
            client_id=meta["client_id"],
            params=params_from_bytes(data),
            num_examples=meta["num_examples"],
            metrics=meta["metrics"],
            modalities=frozenset(meta["modalities"]),
            extra=meta["extra"],
            compression=header,
        )
