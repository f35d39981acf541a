"""runtime=flower: the same experiment on Flower's Message API (`ServerApp`, `ClientApp`).

- `fedmm run runtime=flower ...` runs it in Flower's simulation engine (one virtual SuperNode per client).
- `fedmm flower app OUT [overrides]` writes a Flower App for a real SuperLink / SuperNode deployment (`flwr run OUT`).

Both drive fedmm's own server loop (`fl/server.py`) inside the ServerApp, so sampling, strategies, checkpoints and
the run directory are those of the embedded runtime and results match it for the same seed. Flower is an optional
dependency (`pip install fedmm[flower]`); nothing here imports it until a Flower run starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmm.registry import RUNTIMES
from fedmm.runtime.base import Runtime, RunResult
from fedmm.options import opt


@dataclass
class FlowerRuntimeConfig:
    name: str = opt("flower", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    round_timeout: float = opt(600.0, "seconds to wait for a round's replies; a client that misses it counts as failed")
    connect_timeout: float = opt(120.0, "seconds to wait at start for a SuperNode per client")
    cpus_per_client: float = opt(1.0, "simulation: CPU cores per virtual SuperNode (Ray schedules by them)")
    cpus: int = opt(0, "simulation: cores Ray may use (0 = all of this machine's)")
    warm: bool = opt(
        True, "deployment: train in a long-running worker beside each SuperNode (model and data stay loaded)"
    )


@RUNTIMES.register("flower", FlowerRuntimeConfig)
class FlowerRuntime(Runtime):
    def run(self, settings) -> RunResult:
        from fedmm.runtime.flower.simulation import run_simulation

        return run_simulation(settings, self.cfg)
