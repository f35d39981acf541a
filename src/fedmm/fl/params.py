"""Parameters on the wire: safetensors bytes, so what a runtime sends is exactly what `bytes_up`/`bytes_down` count.

`Params` is a dict of numpy arrays keyed by state-dict name, holding only the tensors that travel.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

Params = dict[str, np.ndarray]


def params_to_bytes(params: Params, metadata: dict[str, str] | None = None) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in params.items()}, metadata=metadata)


def params_from_bytes(data: bytes) -> Params:
    return st_load(data)


def bytes_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (its JSON header's __metadata__)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__", {})


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
        meta = dict(client_id=self.client_id, num_examples=self.num_examples, metrics=self.metrics,
                    modalities=sorted(self.modalities), extra=self.extra)
        return params_to_bytes(self.params, {"fedmm_update": json.dumps(meta), **self.compression})

    @classmethod
    def from_bytes(cls, data: bytes) -> "Update":
        header = bytes_metadata(data)
        meta = json.loads(header.pop("fedmm_update"))
        return cls(client_id=meta["client_id"], params=params_from_bytes(data), num_examples=meta["num_examples"],
                   metrics=meta["metrics"], modalities=frozenset(meta["modalities"]), extra=meta["extra"],
                   compression=header)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_params(path: str | Path, params: Params) -> None:
    atomic_write_bytes(path, params_to_bytes(params))


def load_params(path: str | Path) -> Params:
    return params_from_bytes(Path(path).read_bytes())
