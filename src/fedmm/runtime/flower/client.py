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

from fedmm.runtime.flower.messages import query_reply, train_reply, train_request
from fedmm.runtime.flower.secagg import is_secure, secagg_when_asked, secure_reply, secure_request
from fedmm.runtime.remote import fit, partition_id

client_app = ClientApp(mods=[secagg_when_asked])  # SecAgg+ rounds pass through Flower's secaggplus_mod


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    return query_reply(msg, partition_id(dict(context.node_config)))


def _serve(node_config: dict, node_id: int, payload: bytes, request: dict) -> bytes:
    if request["warm"]:
        from fedmm.runtime.flower.worker import call_worker

        return call_worker(node_config, node_id, payload, request)
    return fit(node_config, payload, request)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    secure = is_secure(msg)
    payload, request = secure_request(msg) if secure else train_request(msg)
    update = _serve(dict(context.node_config), context.node_id, payload, request)
    return secure_reply(msg, payload, update, request["weighted"]) if secure else train_reply(msg, update)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """client_eval: the site scores the global model on its own test data; the reply carries figures only."""
    payload, request = train_request(msg)
    return train_reply(msg, _serve(dict(context.node_config), context.node_id, payload, request))
