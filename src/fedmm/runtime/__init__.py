"""Runtimes move serialized parameters and updates between the server loop and the clients.

`local` (the default) runs everything in this process; `flower` and `nvflare` run on those frameworks. Each is one
folder (or module) whose class subclasses `fedmm.runtime.base.Runtime` and registers in `fedmm.registry.RUNTIMES`.
"""

from fedmm.registry import RUNTIMES  # noqa: F401
