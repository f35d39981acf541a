"""Hugging Face datasets by name (or local folder), through `datasets.load_dataset`: offline, from its cache."""

from __future__ import annotations

from typing import Any

from fedmm.errors import FedmmError


def load_split(name: str, split: str) -> Any:
    """One split of a dataset (split strings such as `validation[:50%]` included), or a one-line error."""
    try:
        import datasets
    except ImportError:
        raise FedmmError("task.dataset needs the datasets package: pip install 'fedmm[hf]'") from None
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - the hub's, the cache's and the builder's errors are many
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise FedmmError(
            f"cannot load the dataset '{name}' split '{split}' ({first}); offline, it must be in the Hugging Face "
            f"cache or a local folder"
        ) from None
