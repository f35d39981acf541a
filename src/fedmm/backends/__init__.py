"""Model families. Each backend module registers itself in `BACKENDS`; the built-in ones are declared in
`configs.py` with their options, and their modules (which import torch) load when a run first builds them.

`Backend` and `BACKENDS` are importable from here; `Backend` loads `base.py` (and torch) only when asked for."""

from fedmm.registry import BACKENDS  # noqa: F401


def __getattr__(name: str):
    if name == "Backend":
        from fedmm.backends.base import Backend

        return Backend
    raise AttributeError(f"module 'fedmm.backends' has no attribute '{name}'")
