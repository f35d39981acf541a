"""The server's round loop, shared by every runtime.

A runtime supplies one function, `fit_clients(round, client_ids, payload, configs) -> {client_id: bytes | error}`,
that delivers the serialized global parameters to the sampled clients and returns their serialized updates. All
the rest (sampling, configuring, aggregating, evaluating, checkpointing, byte accounting) happens here, so every
runtime produces the same results for the same seed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from fedmm.errors import FedmmError
from fedmm.fl.compression import apply_update
from fedmm.fl.params import Params, Update, params_to_bytes
from fedmm.fl.sampling import sample_clients
from fedmm.fl.strategy.base import Strategy
from fedmm.rundir import RunDir

log = logging.getLogger(__name__)

FitClients = Callable[[int, list[int], bytes, dict[int, dict[str, Any]]], dict[int, Union[bytes, BaseException]]]


LR_SCHEDULES = ("constant", "cosine")


def scheduled_lr(lr: float, rnd: int, rounds: int, schedule: str, warmup: int = 0) -> float:
    """The clients' learning rate in round `rnd` (1-based): after `warmup` rounds of linear warm-up (lr * rnd /
    (warmup + 1), so no round trains at 0), constant, or cosine-decayed from lr to lr / 10 over the remaining rounds,
    which steadies the last rounds of non-IID training."""
    if schedule not in LR_SCHEDULES:
        raise FedmmError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)} (got '{schedule}')")
    if rnd <= warmup:
        return lr * rnd / (warmup + 1)
    rnd, rounds = rnd - warmup, rounds - warmup
    if schedule == "constant" or rounds <= 1:
        return lr
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (rnd - 1) / (rounds - 1))))


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


class Server:
    def __init__(self, strategy: Strategy, cfg: ServerConfig, evaluate: Callable[[Params], dict[str, float]],
                 client_defaults: dict[str, Any]):
        self.strategy = strategy
        self.cfg = cfg
        self.evaluate = evaluate
        self.client_defaults = client_defaults

    def run_round(self, rnd: int, global_params: Params, fit_clients: FitClients) -> tuple[Params, dict[str, Any]]:
        t0 = time.perf_counter()
        ids = sample_clients(self.cfg.num_clients, self.cfg.per_round, self.cfg.seed, rnd)
        lr = scheduled_lr(float(self.client_defaults["lr"]), rnd, self.cfg.rounds, self.cfg.lr_schedule,
                          self.cfg.lr_warmup_rounds)
        configs = self.strategy.configure(rnd, ids, {**self.client_defaults, "lr": lr, "round": rnd,
                                                     "seed": self.cfg.seed})
        payload = params_to_bytes(global_params)
        replies = fit_clients(rnd, ids, payload, configs)
        updates, failures = [], {}
        for cid in ids:
            reply = replies.get(cid, TimeoutError("no reply"))
            if isinstance(reply, BaseException):
                failures[cid] = f"{type(reply).__name__}: {reply}"
                log.warning("round %d: client %d failed: %s", rnd, cid, failures[cid])
            else:
                update = Update.from_bytes(reply)
                update.params = apply_update(update.params, update.compression, global_params)
                updates.append(update)
        if len(updates) < self.cfg.min_clients:
            raise FedmmError(f"round {rnd}: only {len(updates)} of {len(ids)} clients replied, fewer than "
                             f"min_clients={self.cfg.min_clients}; completed rounds are kept, fix the clients and "
                             f"resume with resume=<run_dir>")
        self.strategy.round_metrics = {}
        new_params = self.strategy.aggregate(rnd, global_params, updates)
        t_eval = time.perf_counter()
        evaluated = rnd % self.cfg.eval_every == 0 or rnd == self.cfg.rounds
        metrics = self.evaluate(new_params) if evaluated else {}
        n = sum(u.num_examples for u in updates)
        record: dict[str, Any] = {
            "round": rnd,
            "num_clients": len(updates),
            "clients": [u.client_id for u in updates],
            "num_examples": n,
            "lr": lr,
            "train_loss": float(np.sum([u.metrics.get("train_loss", np.nan) * u.num_examples for u in updates]) / n),
            "bytes_down": len(payload) * len(ids),
            "bytes_up": sum(len(r) for r in replies.values() if isinstance(r, (bytes, bytearray))),
            "client_seconds": float(sum(u.metrics.get("seconds", 0.0) for u in updates)),
            "eval_seconds": time.perf_counter() - t_eval,
            **{f"eval_{k}": v for k, v in metrics.items()},
            **{f"strategy_{k}": v for k, v in self.strategy.round_metrics.items()},
        }
        if failures:
            record["failures"] = failures
        record["seconds"] = time.perf_counter() - t0
        return new_params, record

    def run(self, rundir: RunDir, global_params: Params, start_round: int, fit_clients: FitClients,
            on_round: Optional[Callable[[dict[str, Any]], None]] = None) -> Params:
        for rnd in range(start_round, self.cfg.rounds + 1):
            global_params, record = self.run_round(rnd, global_params, fit_clients)
            rundir.append_metrics(record)
            rundir.save_checkpoint(rnd, global_params, self.strategy.state_dict(), keep=self.cfg.keep_checkpoints)
            if on_round:
                on_round(record)
        return global_params
