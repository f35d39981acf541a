"""The embedded runtime: server and clients in one process, one model instance reused for every client.

Parameters still travel as serialized bytes, so `bytes_up`/`bytes_down` are the real sizes and the code path is the
one the distributed runtimes use.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from fedmm.runtime import RUNTIMES

if TYPE_CHECKING:
    from fedmm.experiment import Experiment


@dataclass
class LocalRuntimeConfig:
    name: str = "local"


@RUNTIMES.register("local", LocalRuntimeConfig)
class LocalRuntime:
    def __init__(self, cfg: LocalRuntimeConfig):
        self.cfg = cfg

    def run(self, exp: "Experiment") -> dict[str, Any]:
        from tqdm.auto import tqdm

        from fedmm.client.client import ClientTrainer

        trainer = ClientTrainer(exp.backend, exp.model, progress=exp.progress,
                                state_dir=exp.rundir.path / "client_state")

        def fit_clients(rnd: int, ids: list[int], payload: bytes, configs: dict[int, dict]
                        ) -> Iterator[tuple[int, bytes]]:
            """One client after the other, each reply handed on before the next client trains."""
            for cid in tqdm(ids, desc=f"round {rnd}/{exp.settings.rounds}", leave=False, unit="client",
                            disable=not exp.progress or None):
                yield cid, trainer.fit_bytes(cid, exp.clients[cid], payload, configs[cid], exp.client_val[cid])

        return exp.run_server(fit_clients)
