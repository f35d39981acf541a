"""How fedmm's bytes travel in Flower messages.

The global parameters and an update are fedmm's own safetensors bytes, carried as one uint8 `Array` of an
`ArrayRecord`: Flower chunks and streams arrays, and the byte counts in metrics.jsonl stay those of every other
runtime. The round's request (the run's config.yaml, the client's round config) is a `ConfigRecord`.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Union

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedmm.errors import SiteRefusal

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


def refusal_reply(msg: Message, refusal: SiteRefusal) -> Message:
    """A site's refusal, as a reply with content (Flower's own error reply would carry the exception's text)."""
    return Message(RecordDict({"refusal": ConfigRecord(refusal.to_wire())}), reply_to=msg)


def _refusal(reply: Message) -> Optional[SiteRefusal]:
    try:
        record = reply.content.config_records.get("refusal")
    except Exception:  # noqa: BLE001 - a reply without readable content is no refusal (the caller checks the rest)
        return None
    return SiteRefusal.from_wire(dict(record)) if record is not None else None


def partition_of(reply: Message) -> int:
    """The partition-id a SuperNode claims; ValueError, in fedmm's words, for anything but a whole number >= 0."""
    refused = _refusal(reply)
    if refused is not None:
        raise ValueError(str(refused))
    try:
        value = reply.content.config_records["node"]["partition-id"]
    except Exception:  # noqa: BLE001 - a reply without the record is the node's fault, named
        raise ValueError("its reply has no partition-id") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("its partition-id is not a whole number >= 0")
    return value


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


def update_of(reply: Message) -> Union[bytes, BaseException]:
    """A train or evaluate reply's update bytes, or the exception that names what is wrong with the reply (the
    server loop records it as that client's failure)."""
    refused = _refusal(reply)
    if refused is not None:
        return refused
    try:
        return _unblob(reply.content.array_records["update"])
    except Exception:  # noqa: BLE001 - whatever a node sent, it is that node's failure, never the server's crash
        return ValueError("its reply has no readable update record")
