"""`Params` and their bytes: safetensors on the wire and on disk, so what a runtime sends is exactly what
`bytes_up`/`bytes_down` count, and a checkpoint is the same format.

`Params` is a dict of numpy arrays keyed by state-dict name, holding only the tensors that travel. A leaf module:
the run directory, the models' helpers and the federated core all use it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

Params = dict[str, np.ndarray]

# The prefix of the tensors a strategy sends beside the model's, both ways (SCAFFOLD's control variates): one blob
# carries both, so bytes_up / bytes_down count them, and no model key can start with it.
STRATEGY_PREFIX = "fedmm_strategy/"


def with_strategy_tensors(params: Params, extra: Params) -> Params:
    """`params` plus `extra` under STRATEGY_PREFIX, for one blob."""
    return {**params, **{STRATEGY_PREFIX + k: v for k, v in extra.items()}}


def split_strategy_tensors(params: Params) -> tuple[Params, Params]:
    """(the model's tensors, the strategy's without their prefix) of a received blob."""
    model = {k: v for k, v in params.items() if not k.startswith(STRATEGY_PREFIX)}
    return model, {k[len(STRATEGY_PREFIX) :]: v for k, v in params.items() if k.startswith(STRATEGY_PREFIX)}


def params_to_bytes(params: Params, metadata: dict[str, str] | None = None) -> bytes:
    return st_save({k: np.ascontiguousarray(v) for k, v in params.items()}, metadata=metadata)


def params_from_bytes(data: bytes) -> Params:
    return st_load(data)


def bytes_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (its JSON header's __metadata__)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


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
