"""Runtimes move serialized parameters and updates between the server loop and the clients.

`local` (the default) runs everything in this process. Each runtime registers itself in `RUNTIMES`.
"""
from __future__ import annotations

from typing import Callable

from fedmm.registry import Registry

# factory(cfg) -> object with .run(experiment) -> final server metrics, or with .run_settings(settings) ->
# (RunDir, final server metrics) when the experiment is built elsewhere (NVFlare's server process)
RUNTIMES: Registry[Callable] = Registry("runtime")

from fedmm.runtime import local as _local  # noqa: E402,F401
from fedmm.runtime import flower as _flower  # noqa: E402,F401
from fedmm.runtime import nvflare as _nvflare  # noqa: E402,F401
