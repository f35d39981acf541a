"""The runtime contract and the server entry every runtime shares.

A runtime is a class registered in `fedmm.registry.RUNTIMES` with its options dataclass, and has one entry point,
`run(settings) -> RunResult`: it runs the experiment wherever its server runs (this process, Flower's ServerApp,
NVFlare's server job). Wherever that is, the server side is `serve`: build the federation, connect the clients,
run the rounds, write the report. A runtime only supplies how to reach its clients (`fit_clients`, see
`fedmm.fl.server`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from fedmm.record import eval_summary
from fedmm.rundir import RunDir

if TYPE_CHECKING:  # imported where used: registering a runtime stays cheap (the configuration lists them)
    from fedmm.config import Settings
    from fedmm.experiment.server import Federation
    from fedmm.fl.server import FitClients


@dataclass
class RunResult:
    rundir: RunDir
    final: dict[str, Any]  # the last round's record


class Runtime:
    """Base of every runtime: `cfg` is its options dataclass (the `runtime.*` settings)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def run(self, settings: "Settings") -> RunResult:
        raise NotImplementedError


def serve(
    settings: "Settings",
    connect: "Callable[[Federation], FitClients]",
    federation: "Optional[Federation]" = None,
    announce: Optional[Callable[[str], None]] = None,
) -> RunResult:
    """The server side of a run under any runtime: `federation` (built from `settings` unless given), clients
    reached through `connect(federation)`, the remaining rounds, report.md. `announce` gets the closing line of a
    server that runs apart from the user's terminal (its log)."""
    from fedmm.experiment.server import build_server

    fed = federation or build_server(settings)
    final = fed.run(connect(fed))
    if announce is not None:
        announce(f"fedmm: run finished: {Path(fed.rundir.path).resolve()}: {eval_summary(final)}")
    return RunResult(fed.rundir, final)
