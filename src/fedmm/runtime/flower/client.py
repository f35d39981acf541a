"""The ClientApp side: fedmm's client logic on a SuperNode's share of the data.

A SuperNode says which client it is, and where its data is, with its node config (`partition-id=<i>`, `data-root`,
`state-dir`: see `fedmm.runtime.remote`). Building a model and loading data take far longer than a round of a small
model, so `remote.fit` builds them once per process and reuses them. Flower's simulation keeps its ClientApp
processes, so that alone keeps them warm. A deployed SuperNode starts a fresh process for every message; there,
with `warm` (the default), the ClientApp hands the work to a long-running worker beside the SuperNode (`worker.py`)
and stays light itself: this module imports no torch.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

import logging

from fedmm.errors import FedmmError, SiteRefusal
from fedmm.runtime.flower.messages import query_reply, refusal_reply, train_reply, train_request
from fedmm.runtime.flower.secagg import is_secure, secagg_when_asked, secure_reply, secure_request
from fedmm.runtime.remote import answer, partition_id

log = logging.getLogger("fedmm.site")
client_app = ClientApp(mods=[secagg_when_asked])  # SecAgg+ rounds pass through Flower's secaggplus_mod


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    try:
        return query_reply(msg, partition_id(dict(context.node_config)))
    except FedmmError as e:
        log.error("%s", e)
        return refusal_reply(msg, SiteRefusal("partition_id", "this SuperNode has no valid partition-id"))


def _serve(node_config: dict, node_id: int, payload: bytes, request: dict) -> bytes:
    if isinstance(request, dict) and request.get("warm"):
        from fedmm.runtime.flower.worker import call_worker

        return call_worker(node_config, node_id, payload, request)
    return answer(node_config, payload, request)


def _reply(msg: Message, context: Context, secure: bool) -> Message:
    """The site's answer to a train or evaluate message: its update, or its refusal (never an exception's text,
    which Flower would send to the server as the error's reason)."""
    try:
        payload, request = secure_request(msg) if secure else train_request(msg)
        update = _serve(dict(context.node_config), context.node_id, payload, request)
        return secure_reply(msg, payload, update, request["weighted"]) if secure else train_reply(msg, update)
    except SiteRefusal as e:
        return refusal_reply(msg, e)
    except Exception as e:  # noqa: BLE001 - named in the site's own log only
        log.error("cannot serve the server's message: %s: %s", type(e).__name__, e, exc_info=True)
        return refusal_reply(msg, SiteRefusal("site_error", "the site could not answer; its log has the details"))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context, is_secure(msg))


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """client_eval: the site scores the global model on its own test data; the reply carries figures only."""
    return _reply(msg, context, False)
