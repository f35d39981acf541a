"""The server's round loop, shared by every runtime.

A runtime supplies one function, `fit_clients(round, client_ids, payload, instructions) -> {client_id: bytes |
error}`, that delivers the serialized global parameters and each client's `FitInstructions` to the sampled clients
and returns their serialized updates. All the rest (sampling, instructing, aggregating, evaluating, checkpointing,
byte accounting, the metrics record) happens here, so every runtime produces the same results for the same seed.
Client-side evaluation (`client_eval`) goes through the same function: instructions with `task="evaluate"`, which a
runtime sends as its evaluate message, and replies that carry figures instead of tensors.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from fedmm.console import say
from fedmm.errors import FedmmError
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.privacy import Accountant, Summed, clipped_sum, local_noise_std
from fedmm.fl.sampling import sample_clients
from fedmm.fl.selection import Selection
from fedmm.fl.strategy.base import Strategy
from fedmm.fl.update import Update
from fedmm.metrics import site_summary
from fedmm.fl.validation import (
    Expected,
    Rejected,
    check_eval_reply,
    check_reply,
    clip_update,
    delta_norm,
    norm_bound,
)
from fedmm.params import Params, params_to_bytes, with_strategy_tensors
from fedmm.record import RoundRecord
from fedmm.rundir import RunDir
from fedmm.schedule import scheduled_lr

log = logging.getLogger(__name__)

Reply = Union[bytes, BaseException]
# A runtime's fit_clients returns {client_id: reply}, or yields (client_id, reply) pairs as replies arrive. Yield in
# the order of the ids given, so that every runtime aggregates in the same order (float sums depend on it).
# A secure-aggregation runtime returns one `Summed` instead: the server never sees an individual update.
FitClients = Callable[
    [int, list[int], bytes, dict[int, FitInstructions]], Union[dict[int, Reply], Iterable[tuple[int, Reply]], Summed]
]


def checked_sum(summed: Summed, global_params: Params, rnd: int) -> Summed:
    """A secure sum, checked as far as a sum can be: every floating key with the global shape, finite. It cannot
    be traced to a client, so a bad one stops the round (a client's error cannot be told from the protocol's)."""
    for k, g in global_params.items():
        v = summed.delta_sum.get(k)
        if np.issubdtype(g.dtype, np.floating) and (v is None or v.shape != g.shape or not np.isfinite(v).all()):
            raise FedmmError(
                f"round {rnd}: the securely aggregated sum is unusable at {k} (missing, misshapen or "
                f"non-finite); nothing of this round was written (resume=<run_dir> continues)"
            )
    if summed.clients and summed.weight <= 0:
        raise FedmmError(f"round {rnd}: the securely aggregated weights sum to {summed.weight}")
    return summed


def _in_order(
    ids: list[int], replies: Union[dict[int, Reply], Iterable[tuple[int, Reply]]], refused: dict[Any, str]
) -> Iterator[tuple[int, Reply]]:
    """(client id, reply) for every sampled client, once: a dict's in the order of `ids`, an iterator's as it yields
    them; a client that never replied gets a TimeoutError. What a runtime hands over for a client it was not asked
    about, or a second time for the same client, goes to `refused` (whatever the runtime: a user's can do this)."""
    sampled = set(ids)
    if isinstance(replies, dict):
        for cid in replies:
            if cid not in sampled:
                refused[str(cid)[:40]] = "was not sampled this round"
        for cid in ids:
            yield cid, replies.get(cid, TimeoutError("no reply"))
        return
    seen = set()
    for cid, reply in replies:
        if cid not in sampled:
            refused[str(cid)[:40]] = "was not sampled this round"
        elif cid in seen:
            log.warning("client %s replied twice this round; the second reply is ignored", cid)
        else:
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
    client_eval: str = "none"  # none | final | every: every site scores the new global model on its own test data


class Server:
    """The round loop. `instructions` is what every client is told before the schedule and the strategy adjust
    it for a round (its `round` and `lr` are replaced each round). Every reply is checked against `expected`
    (fedmm.fl.validation) before the strategy sees it.

    With `privacy` (client-level DP, fedmm.fl.privacy) clients are Poisson-sampled, the updates are clipped and
    summed (or the clients did that and noised their share), and the strategy gets one update: the noised mean.
    A runtime with secure aggregation returns a `Summed` instead of replies, which takes the same road."""

    def __init__(
        self,
        strategy: Strategy,
        cfg: ServerConfig,
        evaluate: Callable[[Params], dict[str, float]],
        instructions: FitInstructions,
        expected: Optional[dict[int, Expected]] = None,
        privacy: Optional[Accountant] = None,
        selection: Optional[Selection] = None,
        evaluate_val: Optional[Callable[[Params], dict[str, float]]] = None,
    ):
        self.selection = selection  # select_best / early_stop: scored with evaluate_val (the validation split)
        self.evaluate_val = evaluate_val
        self.strategy = strategy
        self.cfg = cfg
        self.evaluate = evaluate
        self.instructions = instructions
        self.expected = expected or {}  # per client: what its replies may hold (fedmm.fl.validation)
        self.privacy = privacy

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps besides the parameters: the strategy's state, and the privacy spent."""
        state = dict(self.strategy.state_dict())
        if self.privacy:
            state["fedmm_privacy"] = self.privacy.state_dict()
        if self.selection:
            state["fedmm_selection"] = self.selection.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        spent = state.pop("fedmm_privacy", None)
        if self.privacy and spent:
            self.privacy.load_state_dict(spent)
        selected = state.pop("fedmm_selection", None)
        if self.selection and selected:
            self.selection.load_state_dict(selected)
        self.strategy.load_state_dict(state)

    def _configure(self, rnd: int, ids: list[int], lr: float) -> dict[int, FitInstructions]:
        configs = self.strategy.configure(rnd, ids, replace(self.instructions, round=rnd, lr=lr))
        dp = self.privacy
        if dp and dp.local:  # each client clips and adds its share of the noise
            std = local_noise_std(dp.noise_multiplier, dp.clip_norm, len(ids))
            configs = {
                c: replace(ins, dp_clip_norm=dp.clip_norm, dp_noise_std=std, dp_noise_seed=dp.noise_seed)
                for c, ins in configs.items()
            }
        return configs

    def run_round(self, rnd: int, global_params: Params, fit_clients: FitClients) -> tuple[Params, dict[str, Any]]:
        t0 = time.perf_counter()
        dp = self.privacy
        if dp:
            ids = dp.sample(self.cfg.seed, rnd)
        else:
            ids = sample_clients(self.cfg.num_clients, self.cfg.per_round, self.cfg.seed, rnd)
        lr = scheduled_lr(self.instructions.lr, rnd, self.cfg.rounds, self.cfg.lr_schedule, self.cfg.lr_warmup_rounds)
        configs = self._configure(rnd, ids, lr)
        payload = params_to_bytes(with_strategy_tensors(global_params, self.strategy.downlink(rnd, global_params)))
        got = {
            "ids": [],
            "examples": 0,
            "loss": 0.0,
            "seconds": 0.0,
            "max_seconds": 0.0,
            "bytes_up": 0,
            "all_in": False,
        }
        failures: dict[int, str] = {}
        rejected: dict[int, str] = {}
        clipped: dict[int, float] = {}
        replies = fit_clients(rnd, ids, payload, configs)

        def count(cid: int, num_examples: int, metrics: dict[str, float]) -> None:
            got["ids"].append(cid)
            got["examples"] += num_examples
            got["loss"] += metrics.get("train_loss", np.nan) * num_examples
            got["seconds"] += metrics.get("seconds", 0.0)
            got["max_seconds"] = max(got["max_seconds"], metrics.get("seconds", 0.0))

        def checked() -> Iterator[Update]:
            """The replies that pass validation, as updates with full tensors, in arrival order; failures and
            rejections noted."""
            for cid, reply in _in_order(ids, replies, rejected):
                if isinstance(reply, BaseException):
                    failures[cid] = f"{type(reply).__name__}: {reply}"
                    log.warning("round %d: client %d failed: %s", rnd, cid, failures[cid])
                    continue
                if not isinstance(reply, (bytes, bytearray, memoryview)):
                    rejected[cid] = f"not a fedmm update (a {type(reply).__name__}, not bytes)"
                    continue
                got["bytes_up"] += len(reply)
                try:
                    update = check_reply(reply, cid, global_params, self.expected.get(cid, Expected()))
                    reason = self.strategy.refuses(update)
                    if reason:
                        raise Rejected(reason)
                    yield update
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
                count(u.client_id, u.num_examples, u.metrics)
                yield u
            got["all_in"] = True

        self.strategy.round_metrics = {}
        new_params, bound, spent = None, None, {}
        required = min(self.cfg.min_clients, len(ids)) if dp else self.cfg.min_clients
        if isinstance(replies, Summed) or dp:  # the strategy sees one update: the (noised) mean
            if isinstance(replies, Summed):
                summed = checked_sum(replies, global_params, rnd)
                failures.update(summed.failures)
                got["bytes_up"] = summed.bytes_up
                for cid in summed.clients:
                    count(cid, int(summed.metrics.get(cid, {}).get("num_examples", 0)), summed.metrics.get(cid, {}))
            else:
                summed = clipped_sum(
                    bounded(checked(), None), global_params, None if dp.local else dp.clip_norm, clipped
                )
            if len(summed.clients) >= required:
                if dp:
                    mean, z = dp.release(rnd, summed, len(ids), global_params)
                    spent = {"dp_noise_multiplier": z, "dp_epsilon": dp.epsilon()}
                else:
                    mean = summed.mean_update(global_params)
                new_params = self.strategy.aggregate(rnd, global_params, [mean])
        else:
            if self.cfg.max_update_norm == "auto":  # the bound needs the round's norms: the updates are held
                held = list(checked())
                bound = norm_bound("auto", [delta_norm(u.params, global_params) for u in held])
                stream = bounded(held, bound)
            else:
                bound = norm_bound(self.cfg.max_update_norm, [])
                stream = bounded(checked(), bound)
            if self.strategy.streaming:  # aggregated while the clients reply
                try:
                    new_params = self.strategy.aggregate(rnd, global_params, stream)
                except ValueError:  # no weight at all; a client's own error (before all_in) passes through
                    if not got["all_in"] or len(got["ids"]) >= self.cfg.min_clients:
                        raise
            else:
                updates = list(stream)
                self.strategy.caught = len(rejected)  # Byzantine replies already kept out (Krum, Bulyan)
                if len(updates) >= self.cfg.min_clients:
                    new_params = self.strategy.aggregate(rnd, global_params, updates)
        if len(got["ids"]) < required:
            first = next(iter({**failures, **rejected}.items()), None)
            why = f" (client {first[0]}: {first[1]})" if first else ""
            raise FedmmError(
                f"round {rnd}: only {len(got['ids'])} of {len(ids)} clients replied with a valid "
                f"update{why}, fewer than min_clients={self.cfg.min_clients}; completed rounds are "
                f"kept, fix the clients and resume with resume=<run_dir>"
            )
        bad = sorted(
            k for k, v in new_params.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()
        )
        if bad:
            raise FedmmError(
                f"round {rnd}: strategy {type(self.strategy).__name__} produced non-finite values in "
                f"{bad[0]} from finite updates; nothing of this round was written (resume=<run_dir> "
                f"continues from the last checkpoint)"
            )
        t_eval = time.perf_counter()
        evaluated = rnd % self.cfg.eval_every == 0 or rnd == self.cfg.rounds
        metrics = self.evaluate(new_params) if evaluated else {}
        val, stop = {}, None
        if self.selection is not None and evaluated:
            val = self.evaluate_val(new_params)
            self.selection.update(rnd, val)
            stop = self.selection.reason() if self.selection.exhausted() and rnd < self.cfg.rounds else None
        at_sites = {}
        if self.cfg.client_eval == "every" and evaluated or self.cfg.client_eval == "final" and rnd == self.cfg.rounds:
            at_sites = self.evaluate_clients(rnd, lr, new_params, fit_clients, rejected)
        record = RoundRecord(
            round=rnd,
            clients_sampled=len(ids),
            clients_replied=len(got["ids"]),
            clients=got["ids"],
            num_examples=got["examples"],
            lr=lr,
            train_loss=float(got["loss"] / got["examples"]) if got["examples"] else float("nan"),
            bytes_down=len(payload) * len(ids),
            bytes_up=got["bytes_up"],
            client_seconds=float(got["seconds"]),
            client_seconds_max=float(got["max_seconds"]),
            eval_seconds=time.perf_counter() - t_eval,
            eval=metrics,
            strategy=dict(self.strategy.round_metrics),
            failures=failures,
            rejected=rejected,
            clipped=clipped,
            norm_bound=bound,
            dp_epsilon=spent.get("dp_epsilon"),
            dp_noise_multiplier=spent.get("dp_noise_multiplier"),
            val=val,
            best_round=(self.selection.best_round or None) if self.selection else None,
            early_stop=stop,
            client_eval=at_sites,
            client_eval_summary=site_summary(at_sites),
            seconds=time.perf_counter() - t0,
        )
        return new_params, record.to_json()

    def evaluate_clients(
        self,
        rnd: int,
        lr: float,
        params: Params,
        fit_clients: FitClients,
        rejected: Optional[dict[Any, str]] = None,
    ) -> dict[int, dict[str, float]]:
        """client_eval: every client scores `params` (and its personal model) on its own held-out data, asked with
        an evaluate request through the runtime; {client id: {"num_examples": n, metric: value, ...}} of those that
        scored. A failure is logged; a reply that fails `check_eval_reply` goes to `rejected` ("client_eval: ...")."""
        ids = list(range(self.cfg.num_clients))
        ins = replace(self.instructions, round=rnd, lr=lr, task="evaluate")
        refused = rejected if rejected is not None else {}
        out: dict[int, dict[str, float]] = {}
        replies = fit_clients(rnd, ids, params_to_bytes(params), {c: ins for c in ids})
        for cid, reply in _in_order(ids, replies, refused):
            if isinstance(reply, BaseException):
                log.warning("round %d: client %d did not evaluate: %s: %s", rnd, cid, type(reply).__name__, reply)
                continue
            try:
                if not isinstance(reply, (bytes, bytearray, memoryview)):
                    raise Rejected(f"not a fedmm update (a {type(reply).__name__}, not bytes)")
                scored = check_eval_reply(bytes(reply), cid)
            except Rejected as e:
                why = f"client_eval: {e}"
                refused[cid] = f"{refused[cid]}; {why}" if cid in refused else why
                log.warning("round %d: client %d's evaluation rejected: %s", rnd, cid, e)
                continue
            if scored.num_examples:  # 0: a site without test data
                out[cid] = {"num_examples": scored.num_examples, **{k: float(v) for k, v in scored.metrics.items()}}
        return out

    def run(
        self,
        rundir: RunDir,
        global_params: Params,
        start_round: int,
        fit_clients: FitClients,
        on_round: Optional[Callable[[dict[str, Any]], None]] = None,
        identity: Optional[dict[str, Any]] = None,
    ) -> Params:
        """Rounds `start_round`..`rounds`, each recorded and checkpointed (with the run's `identity`, the settings
        a resume must match)."""
        if self.selection and self.selection.exhausted() and start_round <= self.cfg.rounds:
            say(self.selection.reason())  # a resumed run that had stopped early: nothing more to train
            return global_params
        for rnd in range(start_round, self.cfg.rounds + 1):
            global_params, record = self.run_round(rnd, global_params, fit_clients)
            if record.get("best_round") == rnd:
                rundir.save_best(global_params)
            rundir.append_metrics(record)
            rundir.save_checkpoint(
                rnd, global_params, self.state_dict(), keep=self.cfg.keep_checkpoints, identity=identity
            )
            if on_round:
                on_round(record)
            if record.get("early_stop"):
                say(record["early_stop"])
                break
        return global_params
