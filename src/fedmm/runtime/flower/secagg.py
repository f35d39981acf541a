"""Secure aggregation on Flower: one fedmm round through Flower's own SecAgg+ protocol (`SecAggPlusWorkflow` on the
server, `secaggplus_mod` on the ClientApp). No cryptography is written here.

Each sampled client trains as usual and hands the protocol its update *delta* (every floating tensor, sorted by
name, a key it did not train as zeros) with its weight: its example count, or 1 under privacy=dp. The mod quantizes
weight x delta, masks it with pairwise and private masks, and the server can only unmask the weighted sum: the
workflow gives the weighted mean, which becomes fedmm's `Summed`, and the server loop never sees a client's update.
Clients that drop out after the key exchange are survived while every client keeps `secagg_threshold` live
neighbours (Flower's protocol reconstructs the dropped clients' masks from the others' shares).

Error bound against plain FedAvg (stated in the README, tested): each value is clipped to +-c (`secagg_clip_range`)
and stochastically rounded to Q (`secagg_quantization`) levels over [-c, c], an error under 2c / Q; each weight
n / max_weight is rounded to Q levels too. Together, per value of the mean delta:
    |secure mean - exact mean| <= 2c / Q + c * max_weight / (min_weight * Q)      (for deltas within +-c).
With the defaults (c = 8, Q = 2**22) and equal weights that is under 6e-6.

The workflow drives a *legacy* Flower strategy; `_Capture` is the smallest one: it hands the workflow the round's
instructions and keeps what the protocol returns.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from fedmm.fl.privacy import Summed
from fedmm.fl.update import Update
from fedmm.params import Params, params_from_bytes

log = logging.getLogger(__name__)
FITINS_CONFIG = "fitins.config"  # where Flower's FitIns carries its config: marks a SecAgg+ train message


# ------------------------------------------------------------------------------------------------------- client


def secagg_when_asked(msg: Message, ctxt: Context, call_next) -> Message:
    """A ClientApp mod: SecAgg+ messages go through Flower's `secaggplus_mod`, every other message straight on (the
    mod itself expects every train message to be part of the protocol)."""
    from flwr.client.mod import secaggplus_mod

    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def is_secure(msg: Message) -> bool:
    return FITINS_CONFIG in msg.content.config_records


def secure_request(msg: Message) -> tuple[bytes, dict[str, Any]]:
    """The global parameters and fedmm request inside a SecAgg+ train message."""
    config = msg.content.config_records[FITINS_CONFIG]
    return bytes(config["global"]), json.loads(str(config["request"]))


def delta_keys(global_params: Params) -> list[str]:
    return sorted(k for k, v in global_params.items() if np.issubdtype(v.dtype, np.floating))


def secure_reply(msg: Message, payload: bytes, update_bytes: bytes, weighted: bool) -> Message:
    """The client's contribution as a FitRes for the mod to mask: its delta and weight; its metrics (train loss,
    seconds, example count) travel in the clear, as FitRes metrics do."""
    update, received = Update.from_bytes(update_bytes), params_from_bytes(payload)
    deltas = [
        (update.params[k].astype(np.float64) - received[k] if k in update.params else np.zeros(received[k].shape))
        for k in delta_keys(received)
    ]
    metrics = {**{k: float(v) for k, v in update.metrics.items()}, "num_examples": update.num_examples}
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(deltas), update.num_examples if weighted else 1, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


# ------------------------------------------------------------------------------------------------------- server


class _Capture(LegacyStrategy):
    """The legacy strategy the workflow drives: the round's FitIns for the chosen SuperNodes, and the result kept."""

    def __init__(self, fitins: dict[int, FitIns], grid, run_id: int):
        self.fitins = fitins
        self.proxies = {n: GridClientProxy(n, grid, run_id) for n in fitins}
        self.mean: Optional[list[np.ndarray]] = None
        self.results: list[tuple[int, FitRes]] = []

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return [(self.proxies[n], ins) for n, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):
        self.results = [(proxy.node_id, res) for proxy, res in results]
        if results:
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class _Counting:
    """The grid, counting the bytes the clients send back during the protocol (keys, shares, masked vectors), and
    noting the SuperNodes that failed to answer a stage."""

    def __init__(self, grid):
        self.grid = grid
        self.bytes_up = 0
        self.failed: list[set[int]] = []  # per protocol stage, the SuperNodes that did not answer

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, timeout=None):
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {m.metadata.src_node_id for m in replies if not m.has_error()}
        self.failed.append({m.metadata.dst_node_id for m in messages} - answered)
        for m in replies:
            if m.has_error():
                continue
            for record in m.content.config_records.values():
                for v in record.values():
                    items = v if isinstance(v, list) else [v]
                    self.bytes_up += sum(len(x) for x in items if isinstance(x, (bytes, str)))
            for record in m.content.array_records.values():
                self.bytes_up += sum(len(a.data) for a in record.values())
        return replies


def secagg_shares(value: float) -> float | int:
    """Flower reads an int as a count and a float as a fraction."""
    return float(value) if value <= 1 else int(value)


def secure_round(
    grid,
    nodes: dict[int, int],
    rnd: int,
    payload: bytes,
    requests: dict[int, dict[str, Any]],
    global_params: Params,
    privacy: Any,
    max_weight: float,
    timeout: float,
) -> Summed:
    """One round through SecAgg+ with the clients `nodes` (client id -> node id): the weighted sum of their deltas
    and their plaintext metrics, as `Summed` (no contributors when the protocol halted).

    Flower 1.41's protocol survives a client that drops after the key exchange, but halts when one drops before it
    (the others are asked for key shares they never received: `KeyError` in `secaggplus_mod._unmask`). So SuperNodes
    the SuperLink no longer lists are left out from the start, and a halted round is run once more without the
    SuperNodes that failed (their clients count as failed)."""
    connected = set(grid.get_node_ids())
    gone = {c: "its SuperNode is no longer connected" for c, n in nodes.items() if n not in connected}
    summed, failed = _secure_round(
        grid,
        {c: n for c, n in nodes.items() if c not in gone},
        rnd,
        payload,
        requests,
        global_params,
        privacy,
        max_weight,
        timeout,
    )
    if not summed.clients and failed:
        log.warning("round %d: secure aggregation halted; once more without SuperNodes %s", rnd, sorted(failed))
        bytes_up = summed.bytes_up
        left = {c: n for c, n in nodes.items() if c not in gone and n not in failed}
        summed, _ = _secure_round(grid, left, rnd, payload, requests, global_params, privacy, max_weight, timeout)
        summed.bytes_up += bytes_up
        summed.failures.update({c: "dropped out of secure aggregation" for c, n in nodes.items() if n in failed})
    summed.failures.update(gone)
    return summed


def _secure_round(
    grid,
    nodes: dict[int, int],
    rnd: int,
    payload: bytes,
    requests: dict[int, dict[str, Any]],
    global_params: Params,
    privacy: Any,
    max_weight: float,
    timeout: float,
) -> tuple[Summed, set[int]]:
    empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
    fitins = {nodes[c]: FitIns(empty, {"global": payload, "request": json.dumps(requests[c])}) for c in nodes}
    counting = _Counting(grid)
    capture = _Capture(fitins, counting, grid.run.run_id)
    context = LegacyContext(
        Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=capture
    )
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    workflow = SecAggPlusWorkflow(
        secagg_shares(privacy.secagg_shares),
        secagg_shares(privacy.secagg_threshold),
        max_weight=max_weight,
        clipping_range=float(privacy.secagg_clip_range),
        quantization_range=int(privacy.secagg_quantization),
        timeout=timeout,
    )
    workflow(counting, context)
    client_of = {n: c for c, n in nodes.items()}
    keys = delta_keys(global_params)
    summed = Summed({k: np.zeros(global_params[k].shape) for k in keys}, 0.0, bytes_up=counting.bytes_up)
    early = set().union(*counting.failed[:2])  # dropped before or during the key exchange
    if capture.mean is None:
        why = "secure aggregation halted: too few clients stayed in the protocol for secagg_threshold"
        summed.failures = {c: why for c in nodes}
        return summed, early
    weights = {client_of[n]: float(res.num_examples) for n, res in capture.results}
    summed.weight = sum(weights.values())
    summed.delta_sum = {k: np.asarray(m, dtype=np.float64) * summed.weight for k, m in zip(keys, capture.mean)}
    summed.clients = sorted(weights)
    summed.metrics = {client_of[n]: {k: float(v) for k, v in res.metrics.items()} for n, res in capture.results}
    summed.num_examples = int(sum(m.get("num_examples", 0) for m in summed.metrics.values()))
    summed.failures = {c: "dropped out of secure aggregation" for c in nodes if c not in weights}
    return summed, early
