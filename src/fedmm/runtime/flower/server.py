"""The ServerApp side: fedmm's server loop, with a `fit_clients` that reaches the clients through Flower's Grid.

Flower names SuperNodes by random node ids; fedmm's clients are numbered 0..K-1 (their data partition). A `query`
message asks each SuperNode for its `partition-id` (its node config), so sampling, seeds and aggregation order are
the embedded runtime's. SuperNodes that connect late are asked before the next round. A partition-id belongs to the
first SuperNode that claims it while that one stays connected: a second claimant is refused (a site cannot take
over another's place), and takes over only once the first is gone.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional, Union

from flwr.app import Message
from flwr.serverapp import Grid

from fedmm.config.schema import PrivacyConfig
from fedmm.errors import FedmmError
from fedmm.fl.privacy import Summed
from fedmm.fl.instructions import FitInstructions
from fedmm.fl.server import Reply
from fedmm.runtime.flower.messages import (
    EVALUATE,
    TRAIN,
    partition_of,
    query_message,
    train_message,
    update_of,
)

log = logging.getLogger(__name__)
POLL = 0.05  # seconds between pulls for replies


def reply_error(reply: Message) -> Optional[Exception]:
    """A failed reply as an exception (Flower's error reason, which names the client's exception)."""
    if reply.has_error():
        reason = "".join(c for c in str(reply.error.reason) if c.isprintable())[:300]
        return RuntimeError(f"ClientApp error {reply.error.code}: {reason}")
    return None


class GridClients:
    """`fit_clients` over a Flower Grid; `request` is what every train message carries besides the parameters (the
    run's config.yaml and where client state lives)."""

    def __init__(
        self,
        grid: Grid,
        num_clients: int,
        min_clients: int,
        request: dict[str, Any],
        round_timeout: float,
        connect_timeout: float,
        secure: Optional[tuple[Any, float]] = None,
    ):
        self.grid = grid
        self.secure = secure  # (privacy settings, max_weight) when rounds go through SecAgg+ (secagg.py)
        self.num_clients = num_clients
        self.min_clients = min_clients
        self.request = request
        self.round_timeout = round_timeout
        self.nodes: dict[int, int] = {}  # client id (partition-id) -> node id
        self.asked: set[int] = set()  # node ids already asked for their partition-id
        self._connect(connect_timeout)

    def _exchange(self, messages: list[Message], timeout: float) -> list[Optional[Message]]:
        """The reply to each message (None: none within `timeout`). Replies are pulled every `POLL` seconds; Flower's
        own `send_and_receive` sleeps 3 s between pulls in a deployment, which would add up to 3 s to a round. A
        reply may come from the SuperLink instead of the node (an error reply for a node that went away), so replies
        are matched by the message they answer."""
        sent = list(self.grid.push_messages(messages))
        pending, replies = set(sent), {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for m in self.grid.pull_messages(pending):
                replies[m.metadata.reply_to_message_id] = m
                pending.discard(m.metadata.reply_to_message_id)
            if pending:
                time.sleep(POLL)
        return [replies.get(i) for i in sent]

    def _ask(self, node_ids: list[int], timeout: float) -> None:
        self.asked.update(node_ids)
        for node, reply in zip(node_ids, self._exchange([query_message(n) for n in node_ids], timeout)):
            error = reply_error(reply) if reply is not None else TimeoutError("no reply")
            if error is not None:
                log.warning("SuperNode %s did not say its partition-id: %s", node, error)
                continue
            try:
                cid = partition_of(reply)
            except ValueError as e:
                log.warning("SuperNode %s is refused: %s", node, e)
                continue
            if not 0 <= cid < self.num_clients:
                log.warning(
                    "SuperNode %s has partition-id=%d, but this experiment has %d clients (0..%d); refused (fix "
                    "its --node-config)",
                    node,
                    cid,
                    self.num_clients,
                    self.num_clients - 1,
                )
                continue
            held = self.nodes.get(cid, node)
            if held != node and held in self.grid.get_node_ids():
                log.warning(
                    "partition-id %d: SuperNode %s claims it, but SuperNode %s holds it and is connected; "
                    "refused (the run goes on with %s)",
                    cid,
                    node,
                    held,
                    held,
                )
                continue
            if held != node:
                log.warning("partition-id %d: SuperNode %s takes over from %s, which is gone", cid, node, held)
            self.nodes[cid] = node

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            new = [n for n in self.grid.get_node_ids() if n not in self.asked]
            if new:
                self._ask(new, timeout=max(5.0, deadline - time.monotonic()))
            if len(self.nodes) >= self.num_clients or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        missing = sorted(set(range(self.num_clients)) - set(self.nodes))
        if len(self.nodes) < self.min_clients:
            raise FedmmError(
                f"only {len(self.nodes)} of {self.num_clients} SuperNodes connected within "
                f"runtime.connect_timeout={timeout:g}s (min_clients={self.min_clients}); start "
                f"SuperNodes with --node-config 'partition-id=<i>' for clients {missing}"
            )
        if missing:
            log.warning("no SuperNode for clients %s yet; they count as failed when sampled", missing)

    def __call__(
        self, rnd: int, ids: list[int], payload: bytes, configs: dict[int, "FitInstructions"]
    ) -> Union[dict[int, Reply], Summed]:
        late = [n for n in self.grid.get_node_ids() if n not in self.asked]
        if late:
            self._ask(late, timeout=30.0)
        out: dict[int, Reply] = {}
        sent = [c for c in ids if c in self.nodes]
        for cid in ids:
            if cid not in self.nodes:
                out[cid] = ConnectionError(f"no SuperNode with partition-id={cid} is connected")
        evaluating = all(configs[c].task == "evaluate" for c in ids)
        if self.secure and not evaluating:
            from fedmm.params import params_from_bytes
            from fedmm.runtime.flower.secagg import secure_round

            privacy, max_weight = self.secure
            requests = {
                c: {**self.request, "config": configs[c].to_json(), "weighted": privacy.name != "dp"} for c in sent
            }
            summed = secure_round(
                self.grid,
                {c: self.nodes[c] for c in sent},
                rnd,
                payload,
                requests,
                params_from_bytes(payload),
                privacy,
                max_weight,
                self.round_timeout,
            )
            summed.failures.update({c: f"{type(e).__name__}: {e}" for c, e in out.items()})
            return summed
        kind = EVALUATE if evaluating else TRAIN
        messages = [
            train_message(self.nodes[c], rnd, payload, {**self.request, "config": configs[c].to_json()}, kind)
            for c in sent
        ]
        for cid, reply in zip(sent, self._exchange(messages, self.round_timeout)):
            if reply is None:
                out[cid] = TimeoutError(f"no reply within runtime.round_timeout={self.round_timeout:g}s")
            else:
                out[cid] = reply_error(reply) or update_of(reply)
        return out


def grid_clients(grid: Grid, cfg: Any, warm: bool):
    """`connect` for `fedmm.runtime.base.serve`: the federation's clients as SuperNodes of `grid`."""
    from fedmm.runtime.remote import request_for_clients

    def connect(fed) -> GridClients:
        request = request_for_clients(fed, "flower", warm=warm)
        privacy = fed.settings.typed("privacy", PrivacyConfig)
        # the protocol's weights: example counts (plain FedAvg), 1 each under DP
        max_weight = 1.0 if privacy.name == "dp" else float(max(len(c) for c in fed.clients))
        return GridClients(
            grid,
            len(fed.clients),
            fed.server.cfg.min_clients,
            request,
            cfg.round_timeout,
            cfg.connect_timeout,
            secure=(privacy, max_weight) if privacy.secure_aggregation else None,
        )

    return connect
