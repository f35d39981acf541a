"""The embedded runtime: server and clients in one process, one model instance reused for every client.

Parameters still travel as serialized bytes, so `bytes_up`/`bytes_down` are the real sizes and the code path is the
one the distributed runtimes use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from fedmm.registry import RUNTIMES
from fedmm.runtime.base import Runtime, RunResult, serve
from fedmm.options import opt


@dataclass
class LocalRuntimeConfig:
    name: str = opt("local", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")


@RUNTIMES.register("local", LocalRuntimeConfig)
class LocalRuntime(Runtime):
    def run(self, settings) -> RunResult:
        return serve(settings, connect=in_process_clients)


def in_process_clients(fed):
    """`fit_clients` that trains the sampled clients one after the other in this process, each reply handed on
    before the next client trains."""
    from tqdm.auto import tqdm

    from fedmm.client.client import ClientTrainer
    from fedmm.config.schema import AttackConfig

    trainer = ClientTrainer(
        fed.backend,
        fed.model,
        progress=fed.progress,
        state_dir=fed.rundir.path / "client_state",
        attack=fed.settings.typed("attack", AttackConfig),
    )

    def fit_clients(rnd: int, ids: list[int], payload: bytes, instructions: dict) -> Iterator[tuple[int, bytes]]:
        for cid in tqdm(
            ids, desc=f"round {rnd}/{fed.settings.rounds}", leave=False, unit="client", disable=not fed.progress or None
        ):
            data, val, test = fed.clients[cid], fed.client_val[cid], fed.client_test[cid]
            yield cid, trainer.fit_bytes(cid, data, payload, instructions[cid], val, test)

    return fit_clients
