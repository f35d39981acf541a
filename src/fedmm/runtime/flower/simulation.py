"""`fedmm run runtime=flower`: the experiment in Flower's simulation engine.

The ServerApp runs in this process (a thread, as Flower's simulation runs it) on the federation built here first
(so that a configuration or data error is one line before Ray starts);
each client is a virtual SuperNode whose `partition-id` is its client id. Ray runs the ClientApps in long-lived actor
processes, so the ClientApp's per-process cache keeps models and data loaded across rounds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fedmm.errors import FedmmError
from fedmm.runtime.flower.env import require_flower

if TYPE_CHECKING:
    from fedmm.config import Settings
    from fedmm.runtime.base import RunResult
    from fedmm.runtime.flower import FlowerRuntimeConfig


class _NotRunSimulationDeprecation(logging.Filter):
    """Flower warns that `run_simulation` will give way to `flwr run`; fedmm chose it (one process, one command),
    and a user of `fedmm run` can do nothing about the warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def run_simulation(settings: "Settings", cfg: "FlowerRuntimeConfig") -> "RunResult":
    require_flower()
    import flwr.simulation
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedmm.experiment.server import build_server
    from fedmm.runtime.base import serve
    from fedmm.runtime.flower.client import client_app
    from fedmm.runtime.flower.server import grid_clients
    from fedmm.runtime.remote import simulated_sites

    fed = build_server(settings)
    result: list["RunResult"] = []
    errors: list[FedmmError] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            result.append(serve(settings, grid_clients(grid, cfg, warm=False), federation=fed))
        except FedmmError as e:  # raised here, in the user's process, after Flower has shut down
            errors.append(e)

    init_args: dict[str, Any] = {"include_dashboard": False}
    if cfg.cpus > 0:
        init_args["num_cpus"] = cfg.cpus
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(logging.WARNING)
    if not any(isinstance(f, _NotRunSimulationDeprecation) for f in flwr_log.filters):
        flwr_log.addFilter(_NotRunSimulationDeprecation())
    with simulated_sites(settings, fed.rundir.path):
        flwr.simulation.run_simulation(
            server_app,
            client_app,
            num_supernodes=len(fed.clients),
            backend_config={"client_resources": {"num_cpus": cfg.cpus_per_client}, "init_args": init_args},
        )
    if errors:
        raise errors[0]
    if not result:
        raise FedmmError(
            f"Flower's simulation ended before the run did; completed rounds are kept (resume={fed.rundir.path})"
        )
    return result[0]
