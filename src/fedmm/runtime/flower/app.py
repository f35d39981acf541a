"""The Flower App components of a deployment: `flwr run` loads `server_app` and `client_app` from here.

`fedmm flower app OUT [overrides]` writes a Flower App folder whose pyproject.toml points at them, with the fedmm
overrides as its run config (`overrides`); `flwr run OUT <superlink> --run-config 'overrides="..."'` changes them
per run (`resume=<run_dir>` continues a run). The ServerApp builds the experiment from them, exactly as
`fedmm run` would, and drives fedmm's server loop over the SuperNodes.
"""

from __future__ import annotations

import shlex

from fedmm.runtime.flower.env import offline_environment

offline_environment()

from flwr.app import Context  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402

from fedmm.runtime.flower import client as _client  # noqa: E402

client_app = _client.client_app
server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedmm.config import load_settings
    from fedmm.console import quiet_libraries, say
    from fedmm.errors import FedmmError
    from fedmm.runtime.base import serve
    from fedmm.runtime.flower.server import grid_clients

    quiet_libraries()
    settings = load_settings(shlex.split(str(context.run_config.get("overrides", ""))) + ["progress=false"])
    if settings.runtime.name != "flower":
        raise ValueError(f"this app runs runtime=flower, but its overrides choose runtime={settings.runtime.name}")
    try:
        serve(settings, grid_clients(grid, settings.runtime, warm=settings.runtime.warm), announce=say)
    except FedmmError as e:  # one line in the run's log (flwr log / --stream), then Flower marks the run failed
        print(f"error: {e}", flush=True)
        raise
