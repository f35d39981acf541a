"""The ClientApp side: fedmm's client logic on a SuperNode's share of the data.

A SuperNode says which client it is with its node config (`partition-id=<i>`). Its data is that client's share of
the experiment, as the server's config.yaml defines it: the task's own site folder (MM-IMDb's `client_<i>`, under a
`task.root` the SuperNode may override with `data-root=<folder>`), or the i-th part of a partitioned task.

Building a model and loading data take far longer than a round of a small model, so they are built once per process
and reused (`_SITE`). Flower's simulation keeps its ClientApp processes, so that alone keeps them warm. A deployed
SuperNode starts a fresh process for every message; there, with `warm` (the default), the ClientApp hands the work
to a long-running worker beside the SuperNode (`worker.py`) and stays light itself: this module imports no torch.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedmm.runtime.flower.messages import query_reply, train_reply, train_request

client_app = ClientApp()
_SITE: dict[str, Any] = {}  # the one client this process serves: {"key": ..., "site": Site, "trainer": ClientTrainer}


def partition_id(node_config: dict[str, Any]) -> int:
    if "partition-id" not in node_config:
        raise ValueError("this SuperNode has no partition-id; start it with --node-config 'partition-id=<i>'")
    return int(node_config["partition-id"])


def state_dir(node_config: dict[str, Any], request: dict[str, Any]) -> Path:
    """Where this client keeps its state (error-feedback residuals): the run directory's `client_state/` when it
    runs beside the server (simulation), else `<state-dir>/<run>/` on the SuperNode's machine (default ~/.fedmm)."""
    if request["simulation"] and "state-dir" not in node_config:
        return Path(request["state_dir"])
    root = Path(str(node_config.get("state-dir", Path.home() / ".fedmm" / "flower-state"))).expanduser()
    return root / request["run"]


def fit(node_config: dict[str, Any], payload: bytes, request: dict[str, Any]) -> bytes:
    """One round of local training for this SuperNode's client; the model and data of the last call are reused when
    the experiment is the same."""
    from fedmm.client.client import ClientTrainer
    from fedmm.config.load import settings_from_yaml
    from fedmm.experiment import build_site

    cid = partition_id(node_config)
    key = (request["settings"], cid, str(node_config.get("data-root", "")), str(state_dir(node_config, request)))
    if _SITE.get("key") != key:
        _SITE.clear()
        text = request["settings"]
        if "data-root" in node_config:  # this site's data lives here, not where the server's config says
            from omegaconf import OmegaConf

            cfg = OmegaConf.create(text)
            cfg.task.root = str(node_config["data-root"])
            text = OmegaConf.to_yaml(cfg)
        site = build_site(settings_from_yaml(text), cid)
        _SITE.update(key=key, site=site, trainer=ClientTrainer(site.backend, site.model, progress=False,
                                                               state_dir=state_dir(node_config, request)))
    site = _SITE["site"]
    return _SITE["trainer"].fit_bytes(cid, site.train, payload, request["config"], site.val)


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    return query_reply(msg, partition_id(dict(context.node_config)))


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    payload, request = train_request(msg)
    node_config = dict(context.node_config)
    if request["warm"]:
        from fedmm.runtime.flower.worker import call_worker

        update = call_worker(node_config, context.node_id, payload, request)
    else:
        update = fit(node_config, payload, request)
    return train_reply(msg, update)
