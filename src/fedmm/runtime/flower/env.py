"""Offline-safe Flower settings, applied before Flower is imported (it reads some of them at import time)."""

from __future__ import annotations

import os

from fedmm.errors import FedmmError

FLOWER_VERSION = "1.41.0"  # the version fedmm is tested with (1.42.0's certifi pin cannot be met on some indexes)

OFFLINE = {
    "FLWR_TELEMETRY_ENABLED": "0",  # no usage events sent to flower.ai
    "FLWR_DISABLE_UPDATE_CHECK": "1",  # no version check against flower.ai
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # never `uv sync` an app's dependencies per run
    "RAY_USAGE_STATS_ENABLED": "0",  # simulation: no Ray usage statistics
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def offline_environment() -> dict[str, str]:
    """Set (without overriding the user's choices) and return the offline settings."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in OFFLINE}


def require_flower() -> None:
    offline_environment()
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise FedmmError(
            f"runtime=flower needs Flower: pip install 'fedmm[flower]' (flwr[simulation]=={FLOWER_VERSION})"
        ) from None
