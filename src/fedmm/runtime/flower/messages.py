"""How fedmm's bytes travel in Flower messages.

The global parameters and an update are fedmm's own safetensors bytes, carried as one uint8 `Array` of an
`ArrayRecord`: Flower chunks and streams arrays, and the byte counts in metrics.jsonl stay those of every other
runtime. The round's request (the run's config.yaml, the client's round config) is a `ConfigRecord`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

QUERY = "query"  # which client are you? (the SuperNode's partition-id)
TRAIN = "train"
EVALUATE = "evaluate"  # client_eval: score the global model on the site's own test data (Flower's MessageType)


def _blob(data: bytes) -> ArrayRecord:
    return ArrayRecord({"bytes": Array(np.frombuffer(data, dtype=np.uint8))})


def _unblob(record: ArrayRecord) -> bytes:
    return record["bytes"].numpy().tobytes()


def query_message(node_id: int) -> Message:
    return Message(RecordDict(), dst_node_id=node_id, message_type=QUERY)


def query_reply(msg: Message, partition_id: int) -> Message:
    return Message(RecordDict({"node": ConfigRecord({"partition-id": partition_id})}), reply_to=msg)


def partition_of(reply: Message) -> int:
    return int(reply.content["node"]["partition-id"])


def train_message(
    node_id: int, rnd: int, payload: bytes, request: dict[str, Any], message_type: str = TRAIN
) -> Message:
    """A round's request (train, or evaluate for client_eval: the same content, the site's reply holds no tensors)."""
    content = RecordDict({"global": _blob(payload), "request": ConfigRecord({"json": json.dumps(request)})})
    return Message(content, dst_node_id=node_id, message_type=message_type, group_id=str(rnd))


def train_request(msg: Message) -> tuple[bytes, dict[str, Any]]:
    return _unblob(msg.content["global"]), json.loads(msg.content["request"]["json"])


def train_reply(msg: Message, update: bytes) -> Message:
    return Message(RecordDict({"update": _blob(update)}), reply_to=msg)


def update_of(reply: Message) -> bytes:
    return _unblob(reply.content["update"])
