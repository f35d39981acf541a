"""runtime=nvflare: the same experiment as an NVIDIA FLARE job.

- `fedmm run runtime=nvflare ...` runs the job in NVFlare's simulator.
- `fedmm export nvflare OUT [overrides] --site NAME[=DATA_ROOT] ...` writes the job folder for a provisioned system
  (`nvflare job submit -j OUT`, or the admin console).

The server side is `FedmmController`, an NVFlare ModelController that runs fedmm's server loop with fedmm's
strategies unchanged; the client side is a Client API script running fedmm's client logic on the site's data. Only
the travelling (trainable or adapter) tensors move, as fedmm's safetensors bytes. NVFlare is an optional dependency
(`pip install fedmm[nvflare]`); nothing here imports it until an NVFlare job is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.registry import RUNTIMES
from fedmm.runtime.base import Runtime, RunResult
from fedmm.options import opt

NVFLARE_VERSION = "2.9.0"


@dataclass
class NVFlareRuntimeConfig:
    name: str = opt("nvflare", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    round_timeout: int = opt(600, "seconds a round waits for its clients' results (0 = forever)")
    threads: int = opt(0, "simulator: clients running at once (0 = all)")
    workspace: str = opt("", "simulator workspace ('' = <run_dir>/nvflare)")
    task_check_period: float = opt(
        0.1,
        "seconds between the server's checks of a round's results (NVFlare's default 0.5; the fixed cost of a "
        "round, docs/BENCHMARKS.md)",
    )
    task_request_interval: float = opt(
        0.1, "seconds a site waits before asking for its next task (NVFlare's default 2)"
    )


@RUNTIMES.register("nvflare", NVFlareRuntimeConfig)
class NVFlareRuntime(Runtime):
    def run(self, settings) -> RunResult:
        """The federation is built where NVFlare runs the server (the simulator's server process), not here."""
        from fedmm.runtime.nvflare.job import run_simulator

        return run_simulator(settings, self.cfg)
