"""What a client sends back: its trained tensors (or their compressed delta), example count, metrics and modalities,
as one safetensors blob whose header carries the rest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedmm.params import (
    Params,
    bytes_metadata,
    params_from_bytes,
    params_to_bytes,
    split_strategy_tensors,
    with_strategy_tensors,
)


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
    strategy_params: Params = field(default_factory=dict)  # what the strategy sends besides (SCAFFOLD's delta c_i)

    def to_bytes(self) -> bytes:
        meta = dict(
            client_id=self.client_id,
            num_examples=self.num_examples,
            metrics=self.metrics,
            modalities=sorted(self.modalities),
            extra=self.extra,
        )
        tensors = with_strategy_tensors(self.params, self.strategy_params)
        return params_to_bytes(tensors, {"fedmm_update": json.dumps(meta), **self.compression})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Update":
        header = bytes_metadata(data)
        meta = json.loads(header.pop("fedmm_update"))
        params, strategy_params = split_strategy_tensors(params_from_bytes(data))
        return cls(
            client_id=meta["client_id"],
            params=params,
            strategy_params=strategy_params,
            num_examples=meta["num_examples"],
            metrics=meta["metrics"],
            modalities=frozenset(meta["modalities"]),
            extra=meta["extra"],
            compression=header,
        )
