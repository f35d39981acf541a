"""The server's round loop, shared by every runtime.

A runtime supplies one function, `fit_clients(round, client_ids, payload, instructions) -> {client_id: bytes |
error}`, that delivers the serialized global parameters and each client's `FitInstructions` to the sampled clients
and returns their serialized updates. All the rest (sampling, instructing, aggregating, evaluating, checkpointing,
byte accounting, the metrics record) happens here, so every runtime produces the same results for the same seed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.sampling import sample_clients
from fedmm.fl.strategy.base import Strategy
from fedmm.fl.update import Update
from fedmm.fl.validation import Expected, Rejected, check_reply, clip_update, delta_norm, norm_bound
from fedmm.params import Params, params_to_bytes
from fedmm.record import RoundRecord
from fedmm.rundir import RunDir
from fedmm.schedule import scheduled_lr

log = logging.getLogger(__name__)

Reply = Union[bytes, BaseException]
# A runtime's fit_clients returns {client_id: reply}, or yields (client_id, reply) pairs as replies arrive. Yield in
# the order of the ids given, so that every runtime aggregates in the same order (float sums depend on it).
FitClients = Callable[[int, list[int], bytes, dict[int, FitInstructions]],
                      Union[dict[int, Reply], Iterable[tuple[int, Reply]]]]


def _in_order(ids: list[int], replies: Union[dict[int, Reply], Iterable[tuple[int, Reply]]]
              ) -> Iterator[tuple[int, Reply]]:
    """(client id, reply) for every sampled client: a dict's in the order of `ids`, an iterator's as it yields them;
    a client that never replied gets a TimeoutError."""
    if isinstance(replies, dict):
        for cid in ids:
            yield cid, replies.get(cid, TimeoutError("no reply"))
        return
    seen = set()
    for cid, reply in replies:
        seen.add(cid)
        yield cid, reply
    for cid in ids:
        if cid not in seen:
            yield cid, TimeoutError("no reply")


@dataclass
class ServerConfig:
    num_clients: int
    per_round: int  # clients sampled per round
    min_clients: int  # fewer successful replies than this stop the run
    rounds: int
    seed: int
    eval_every: int = 1
    keep_checkpoints: int = 3
    lr_schedule: str = "constant"
    lr_warmup_rounds: int = 0
    max_update_norm: Any = None  # None | a number | "auto" (see fedmm.fl.validation)
    norm_bound: str = "clip"  # clip | reject


class Server:
    """The round loop. `instructions` is what every client is told before the schedule and the strategy adjust
    it for a round (its `round` and `lr` are replaced each round). Every reply is checked against `expected`
    (fedmm.fl.validation) before the strategy sees it."""

    def __init__(self, strategy: Strategy, cfg: ServerConfig, evaluate: Callable[[Params], dict[str, float]],
                 instructions: FitInstructions, expected: Optional[dict[int, Expected]] = None):
        self.strategy = strategy
        self.cfg = cfg
        self.evaluate = evaluate
        self.instructions = instructions
        self.expected = expected or {}  # per client: what its replies may hold (fedmm.fl.validation)

    def run_round(self, rnd: int, global_params: Params, fit_clients: FitClients) -> tuple[Params, dict[str, Any]]:
        t0 = time.perf_counter()
        ids = sample_clients(self.cfg.num_clients, self.cfg.per_round, self.cfg.seed, rnd)
        lr = scheduled_lr(self.instructions.lr, rnd, self.cfg.rounds, self.cfg.lr_schedule,
                          self.cfg.lr_warmup_rounds)
        configs = self.strategy.configure(rnd, ids, replace(self.instructions, round=rnd, lr=lr))
        payload = params_to_bytes(global_params)
        got = {"ids": [], "examples": 0, "loss": 0.0, "seconds": 0.0, "max_seconds": 0.0, "bytes_up": 0,
               "all_in": False}
        failures: dict[int, str] = {}
        rejected: dict[int, str] = {}
        clipped: dict[int, float] = {}

        def checked() -> Iterator[Update]:
            """The replies that pass validation, as updates with full tensors, in arrival order; failures and
            rejections noted."""
            for cid, reply in _in_order(ids, fit_clients(rnd, ids, payload, configs)):
                if isinstance(reply, BaseException):
                    failures[cid] = f"{type(reply).__name__}: {reply}"
                    log.warning("round %d: client %d failed: %s", rnd, cid, failures[cid])
                    continue
                got["bytes_up"] += len(reply)
                try:
                    yield check_reply(reply, cid, global_params, self.expected.get(cid, Expected()))
                except Rejected as e:
                    rejected[cid] = str(e)
                    log.warning("round %d: client %d rejected: %s", rnd, cid, e)

        def bounded(updates: Iterable[Update], bound: Optional[float]) -> Iterator[Update]:
            """`updates` with their delta norm bounded (clipped or rejected), counted for the record."""
            for u in updates:
                if bound is not None:
                    norm = delta_norm(u.params, global_params)
                    if norm > bound and self.cfg.norm_bound == "reject":
                        rejected[u.client_id] = f"update norm {norm:.4g} over the bound {bound:.4g}"
                        continue
                    if norm > bound:
                        u.params, clipped[u.client_id] = clip_update(u.params, global_params, norm, bound), norm
                got["ids"].append(u.client_id)
                got["examples"] += u.num_examples
                got["loss"] += u.metrics.get("train_loss", np.nan) * u.num_examples
                got["seconds"] += u.metrics.get("seconds", 0.0)
                got["max_seconds"] = max(got["max_seconds"], u.metrics.get("seconds", 0.0))
                yield u
            got["all_in"] = True

        if self.cfg.max_update_norm == "auto":  # the bound needs the round's norms: the updates are held
            held = list(checked())
            bound = norm_bound("auto", [delta_norm(u.params, global_params) for u in held])
            stream = bounded(held, bound)
        else:
            bound = norm_bound(self.cfg.max_update_norm, [])
            stream = bounded(checked(), bound)

        self.strategy.round_metrics = {}
        new_params = None
        if self.strategy.streaming:  # aggregated while the clients reply
            try:
                new_params = self.strategy.aggregate(rnd, global_params, stream)
            except ValueError:  # no weight at all; a client's own error (before all_in) passes through
                if not got["all_in"] or len(got["ids"]) >= self.cfg.min_clients:
                    raise
        else:
            updates = list(stream)
            if len(updates) >= self.cfg.min_clients:
                new_params = self.strategy.aggregate(rnd, global_params, updates)
        if len(got["ids"]) < self.cfg.min_clients:
            first = next(iter({**failures, **rejected}.items()), None)
            why = f" (client {first[0]}: {first[1]})" if first else ""
            raise FedmmError(f"round {rnd}: only {len(got['ids'])} of {len(ids)} clients replied with a valid "
                             f"update{why}, fewer than min_clients={self.cfg.min_clients}; completed rounds are "
                             f"kept, fix the clients and resume with resume=<run_dir>")
        bad = sorted(k for k, v in new_params.items()
                     if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all())
        if bad:
            raise FedmmError(f"round {rnd}: strategy {type(self.strategy).__name__} produced non-finite values in "
                             f"{bad[0]} from finite updates; nothing of this round was written (resume=<run_dir> "
                             f"continues from the last checkpoint)")
        t_eval = time.perf_counter()
        evaluated = rnd % self.cfg.eval_every == 0 or rnd == self.cfg.rounds
        metrics = self.evaluate(new_params) if evaluated else {}
        record = RoundRecord(
            round=rnd, clients_sampled=len(ids), clients_replied=len(got["ids"]), clients=got["ids"],
            num_examples=got["examples"], lr=lr, train_loss=float(got["loss"] / got["examples"]),
            bytes_down=len(payload) * len(ids), bytes_up=got["bytes_up"], client_seconds=float(got["seconds"]),
            client_seconds_max=float(got["max_seconds"]), eval_seconds=time.perf_counter() - t_eval,
            eval=metrics, strategy=dict(self.strategy.round_metrics), failures=failures, rejected=rejected,
            clipped=clipped, norm_bound=bound, seconds=time.perf_counter() - t0)
        return new_params, record.to_json()

    def run(self, rundir: RunDir, global_params: Params, start_round: int, fit_clients: FitClients,
            on_round: Optional[Callable[[dict[str, Any]], None]] = None,
            identity: Optional[dict[str, Any]] = None) -> Params:
        """Rounds `start_round`..`rounds`, each recorded and checkpointed (with the run's `identity`, the settings
        a resume must match)."""
        for rnd in range(start_round, self.cfg.rounds + 1):
            global_params, record = self.run_round(rnd, global_params, fit_clients)
            rundir.append_metrics(record)
            rundir.save_checkpoint(rnd, global_params, self.strategy.state_dict(), keep=self.cfg.keep_checkpoints,
                                   identity=identity)
            if on_round:
                on_round(record)
        return global_params
