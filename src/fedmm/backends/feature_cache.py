"""Frozen encoders' features kept on disk, so that a repeat run (or another run on the same data and weights) skips
encoding.

An entry is one safetensors file, `<cache dir>/features/<key>.safetensors`, whose key is the SHA-256 of what the
features depend on: a digest of the encoder's weights (every tensor of its state dict, by name), the preprocessing
settings (image size and normalisation; text length, pooling and tokenizer) and a fingerprint of the data (the
image table's bytes, or the distinct texts). Change any of them and the key changes: a stale entry is never read.
Writers hold a per-key file lock (filelock) while they encode and write, and write to a temporary file renamed into
place, so concurrent runs encode an entry once and a reader never sees half a file; a damaged entry (a crash mid-copy
by another tool) is encoded again and replaced. `fedmm cache clear` deletes the folder.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from fedmm.data.images import cache_home
from fedmm.errors import FedmmError
from fedmm.params import atomic_write_bytes

if TYPE_CHECKING:
    import torch


def cache_root(setting: str = "") -> Path:
    """The cache folder: `model.cache_dir` when set, else fedmm's cache home ($FEDMM_CACHE, ...)."""
    return Path(setting).expanduser() if setting else cache_home()


def weights_digest(module: "torch.nn.Module") -> str:
    """SHA-256 over the module's state dict: names, dtypes, shapes and bytes."""
    import torch

    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def array_fingerprint(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype}:{a.shape};".encode())
    h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def texts_fingerprint(texts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def entry_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


class FeatureCache:
    def __init__(self, root: Path):
        self.dir = root / "features"

    def get_or_compute(self, key: str, compute: Callable[[], "torch.Tensor"]) -> "torch.Tensor":
        """The entry's features, computed and stored by the first process that needs them."""
        from filelock import FileLock
        from safetensors.torch import load, save

        path = self.dir / f"{key}.safetensors"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FedmmError(
                f"cannot use the feature cache {self.dir} ({e.strerror}); set model.cache_dir to a writable folder "
                f"or model.cache_dir=none"
            ) from None
        with FileLock(str(path) + ".lock"):
            if path.exists():
                try:
                    return load(path.read_bytes())["features"]
                except Exception:  # damaged: encode again and replace it
                    pass
            features = compute().contiguous()
            atomic_write_bytes(path, save({"features": features}))
            return features


def usage(root: Path) -> tuple[int, int]:
    """(entries, bytes) in the cache."""
    folder = root / "features"
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return sum(p.suffix == ".safetensors" for p in files), sum(p.stat().st_size for p in files)


def clear(root: Path) -> tuple[int, int]:
    """Delete the cached features: (entries, bytes) freed."""
    freed = usage(root)
    shutil.rmtree(root / "features", ignore_errors=True)
    return freed
