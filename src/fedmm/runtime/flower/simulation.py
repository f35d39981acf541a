"""`fedmm run runtime=flower`: the experiment in Flower's simulation engine.

The ServerApp runs in this process (a thread, as Flower's simulation runs it) on the experiment already built here;
each client is a virtual SuperNode whose `partition-id` is its client id. Ray runs the ClientApps in long-lived actor
processes, so the ClientApp's per-process cache keeps models and data loaded across rounds.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fedmm.runtime.flower.env import require_flower

if TYPE_CHECKING:
    from fedmm.experiment import Experiment
    from fedmm.runtime.flower import FlowerRuntimeConfig


def run_simulation(exp: "Experiment", cfg: "FlowerRuntimeConfig") -> dict[str, Any]:
    require_flower()
    import flwr.simulation
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from fedmm.runtime.flower.client import client_app
    from fedmm.runtime.flower.server import GridClients
    from fedmm.runtime.remote import request_for_clients

    result: dict[str, Any] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        request = request_for_clients(exp.rundir.path, exp.settings.to_yaml(), "flower", simulation=True, warm=False)
        clients = GridClients(grid, len(exp.clients), exp.server.cfg.min_clients, request, cfg.round_timeout,
                              cfg.connect_timeout)
        result.update(exp.run_server(clients))

    init_args: dict[str, Any] = {"include_dashboard": False}
    if cfg.cpus > 0:
        init_args["num_cpus"] = cfg.cpus
    logging.getLogger("flwr").setLevel(logging.WARNING)
    flwr.simulation.run_simulation(server_app, client_app, num_supernodes=len(exp.clients),
                                   backend_config={"client_resources": {"num_cpus": cfg.cpus_per_client},
                                                   "init_args": init_args})
    return result
