"""Model families. Each backend module registers itself in `BACKENDS` (fedmm.registry lists the built-in modules
and imports them on first use)."""

from fedmm.backends.base import BACKENDS, Backend  # noqa: F401
