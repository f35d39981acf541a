"""The one assembly path: validated settings -> the data, clients, backend, model and travelling keys a role needs.

Every role goes through `assemble`: the server (`build_server`), a remote site (`build_site`), the centralized
baseline and `fedmm info`. So a site builds exactly the model and data share the embedded runtime gives that client,
and both compute the same update for the same global parameters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal, Optional

import numpy as np
import torch

from fedmm.backends.base import Backend
from fedmm.backends.configs import LoraVQAConfig
from fedmm.config import Settings
from fedmm.data.dataset import CLIENT_TEST_HELP, MultimodalDataset, TaskData, subsample
from fedmm.data.modality import assign_modalities, client_modalities, sample_missing
from fedmm.data.noise import labelled, noisy_labels
from fedmm.data.partition import (
    SIZE_RULES,
    dirichlet_partition,
    holdout_split,
    iid_partition,
    natural_id_partition,
    roundrobin_partition,
    shard_partition,
    size_partition,
)
from fedmm.data.tasks import load_task, site_count
from fedmm.client.personal import personal_keys
from fedmm.errors import FedmmError
from fedmm.fl.strategy.base import Strategy
from fedmm.modelops import resolve_device
from fedmm.registry import BACKENDS, STRATEGIES

log = logging.getLogger(__name__)

Role = Literal["server", "site", "centralized", "info"]
DEFAULT_CLIENTS = 4


def load_data(settings: Settings, centralized: bool = False) -> TaskData:
    data = load_task(settings.task, settings.seed, centralized=centralized)
    if data.tune_thresholds and not (data.train.multilabel and len(data.val)):
        raise FedmmError(
            "task.tune_thresholds needs a multilabel task with a server validation split "
            "(MM-IMDb: server_val.csv next to server_test.csv)"
        )
    if data.pos_weight and not data.train.multilabel:
        raise FedmmError("task.pos_weight is for multilabel tasks (it weights each label's positive term)")
    limit, seed = settings.max_train_samples, settings.seed
    clients = data.clients
    if clients is not None and limit:  # the same share of every site
        total = sum(len(c) for c in clients)
        clients = tuple(subsample(c, max(2, round(limit * len(c) / total)), seed + k) for k, c in enumerate(clients))
    return replace(
        data,
        train=subsample(data.train, limit, seed),
        clients=clients,
        val=subsample(data.val, settings.max_eval_samples, seed + 1),
        test=subsample(data.test, settings.max_eval_samples, seed + 2),
    )


def count_clients(settings: Settings, sites: Optional[int] = None) -> int:
    """The number of clients: one per site folder for a task that has them (`sites`, when already counted, else
    counted from the folders), else `num_clients` (default 4). The one place this is worked out."""
    sites = sites if sites is not None else site_count(settings.task)
    if sites is None:
        return settings.num_clients or DEFAULT_CLIENTS
    if settings.num_clients not in (None, sites):
        raise FedmmError(
            f"the task's data names {sites} sites (its folders or task.site_column's values) but "
            f"num_clients={settings.num_clients}; set num_clients={sites} or null (one client per site)"
        )
    return sites


def client_eval_mode(settings: Settings) -> str:
    """`client_eval`, unless the run is private: per-site figures fall outside privacy=dp's guarantee, and secure
    aggregation exists to keep each site's contribution hidden, so both run without client-side evaluation."""
    p = settings.privacy
    return "none" if p.name == "dp" or p.secure_aggregation else settings.client_eval


def split_clients(
    settings: Settings, data: TaskData
) -> tuple[list[MultimodalDataset], list[Optional[MultimodalDataset]]]:
    """The clients' training data and their own test data: the task's own sites (with their test.csv), or the
    training split partitioned over the clients, each holding out `task.client_test_fraction` when client_eval is
    on, or given its round-robin shard of the task's `client_test_pool`. The run's modality settings then take
    modalities away (on top of what a site lacks); the per-sample robustness settings change the training data
    only."""
    tests: list[Optional[MultimodalDataset]]
    if data.clients is not None:
        parts = list(data.clients)
        n = count_clients(settings, sites=len(parts))
        tests = list(data.client_test or [None] * n)
    else:
        n, train, p = count_clients(settings, sites=None), data.train, settings.partition
        if train.sites is not None:  # the rows name their sites (task.site_column): the natural-id split
            idx = natural_id_partition(train.sites, n)
        elif p.name == "iid":
            idx = iid_partition(len(train), n, settings.seed)
        elif p.name == "roundrobin":
            idx = roundrobin_partition(len(train), n)
        elif p.name == "dirichlet":
            idx = dirichlet_partition(
                train.partition_labels(), n, p.alpha, settings.seed, min_size=p.min_size, max_tries=p.max_tries
            )
        elif p.name == "shard":
            idx = shard_partition(train.partition_labels(), n, p.classes_per_client, settings.seed, p.min_size)
        elif p.name in SIZE_RULES:
            idx = size_partition(len(train), n, p.name, settings.seed, p.min_size)
        else:
            raise FedmmError(f"unknown partition '{p.name}'")  # config.load refuses it before any data is read
        left = len(train) - sum(len(i) for i in idx)
        if left:  # shard: classes no client holds
            log.warning(
                "partition=%s leaves %d of %d training examples to no client (classes no client holds); raise "
                "partition.classes_per_client or num_clients to use them",
                p.name,
                left,
                len(train),
            )
        parts, tests = [train.subset(i) for i in idx], [None] * n
        if data.client_test_pool is not None:
            tests = [data.client_test_pool.subset(i) for i in roundrobin_partition(len(data.client_test_pool), n)]
        elif client_eval_mode(settings) != "none":
            fraction = getattr(settings.task, "client_test_fraction", CLIENT_TEST_HELP[0])
            cuts = [holdout_split(len(part), fraction, settings.seed, k) for k, part in enumerate(parts)]
            tests = [part.subset(test) if len(test) else None for part, (_, test) in zip(parts, cuts)]
            parts = [part.subset(train_idx) for part, (train_idx, _) in zip(parts, cuts)]
    mods = assign_modalities(
        n,
        client_modalities(settings.modality.text_only, settings.modality.image_only),
        settings.modality.missing_rate,
        settings.modality.drop,
        settings.seed,
    )
    empty = [k for k, (part, m) in enumerate(zip(parts, mods)) if not m & part.modalities]
    if empty:
        raise FedmmError(
            f"client {empty[0]} would have no modality left: its data has only "
            f"{'+'.join(sorted(parts[empty[0]].modalities))}, and the modality settings take that away"
        )
    parts = [part.with_modalities(m & part.modalities) for part, m in zip(parts, mods)]
    tests = [t.with_modalities(p.modalities & t.modalities) if t is not None else None for p, t in zip(parts, tests)]
    return [per_sample(settings, k, part) for k, part in enumerate(parts)], tests


def per_sample(settings: Settings, k: int, part: MultimodalDataset) -> MultimodalDataset:
    """Client k's training data with the per-sample robustness settings applied: samples that lack a modality
    (when the client has both) and noisy labels (fedmm.data.modality.sample_missing, fedmm.data.noise)."""
    m, noise = settings.modality, settings.noise
    if (m.sample_missing_image or m.sample_missing_text) and part.modalities == {"image", "text"}:
        image, text = sample_missing(len(part), m.sample_missing_image, m.sample_missing_text, settings.seed, k)
        part = replace(part, image_present=image, text_present=text)
    chosen = noise.clients is None or k in noise.clients
    if noise.label_rate and chosen:
        labels, changed = noisy_labels(part.labels, part.num_labels, noise.label_rate, settings.seed, k)
        part = replace(part, labels=labels, noisy_labels=changed)
    if noise.missing_label_rate and chosen:
        keep = labelled(len(part), noise.missing_label_rate, settings.seed, k)
        part = replace(part.subset(np.flatnonzero(keep)), unlabelled=int((~keep).sum()))
    return part


def client_val(data: TaskData, clients: list[MultimodalDataset]) -> list[Optional[MultimodalDataset]]:
    """Each site's own validation rows, when the task has them, with the modalities the site trains on."""
    return [
        v.with_modalities(c.modalities) if v is not None else None
        for c, v in zip(clients, data.client_val or [None] * len(clients))
    ]


def build_backend(settings: Settings, data: Optional[TaskData], check_metrics: bool = True) -> Backend:
    """The backend for the task's label space (none without `data`: a generative model sized by `fedmm info`); with
    `check_metrics`, one that can report the task's metrics (`fedmm info` only sizes the model, whichever task is
    configured)."""
    labels, multilabel = (data.train.num_labels, data.train.multilabel) if data is not None else (0, False)
    backend = BACKENDS.get(settings.model.name).factory(settings.model, labels, multilabel)
    backend.precision = settings.precision
    unsupported = [m for m in data.metrics if m not in backend.metrics] if check_metrics and data else []
    if unsupported:
        other = (
            "a generative one such as model=blip_vqa_tiny"
            if "vqa_accuracy" in unsupported
            else "a classifier such as model=fusion_tiny"
        )
        raise FedmmError(
            f"model {settings.model.name} cannot report {', '.join(unsupported)}, which task "
            f"{settings.task.name} asks for; choose {other}"
        )
    return backend


def build_strategy(settings: Settings) -> Strategy:
    return STRATEGIES.get(settings.strategy.name).factory(settings.strategy)  # checks its config first


def travelling_keys(backend: Backend, model: torch.nn.Module, strategy: Optional[Strategy]) -> list[str]:
    """The trainable keys the strategy lets travel; parameters it keeps at their shared initial values (FFA-LoRA's
    A matrices) are frozen here, so that no client trains them."""
    for name, p in model.named_parameters():
        if p.requires_grad and strategy is not None and not strategy.travels(name):
            p.requires_grad_(False)
    return backend.trainable_keys(model)


@dataclass
class Parts:
    """What `assemble` builds. `clients` and `client_val` are None for the centralized and info roles; `strategy`
    is None for the centralized role; `model` is on the meta device for the info role."""

    settings: Settings
    data: TaskData
    backend: Backend
    model: torch.nn.Module
    keys: list[str]  # the travelling (federated) or trained (centralized) state-dict keys
    strategy: Optional[Strategy] = None
    clients: Optional[list[MultimodalDataset]] = None
    client_val: Optional[list[Optional[MultimodalDataset]]] = None
    client_test: Optional[list[Optional[MultimodalDataset]]] = None  # each site's own test data (client_eval)
    local_keys: tuple[str, ...] = ()  # trained but never sent: the sites' personal tensors (personalize)


def assemble(settings: Settings, role: Role) -> Parts:
    """Data, clients, backend and model for `role`. The model is built from `seed` on the configured device (the
    meta device for `info`, which needs shapes only); the strategy's frozen tensors are frozen."""
    if settings.threads > 0 and role != "info":
        torch.set_num_threads(settings.threads)
    strategy = build_strategy(settings) if role in ("server", "site") else None
    # `info` with a generative VQA model reads no data: its size does not depend on the task's label space
    sized_without_data = role == "info" and isinstance(settings.model, LoraVQAConfig)
    data = None if sized_without_data else load_data(settings, centralized=role == "centralized")
    clients, client_test = split_clients(settings, data) if role in ("server", "site") else (None, None)
    backend = build_backend(settings, data, check_metrics=role != "info")
    if settings.modality.sample_missing_image or settings.modality.sample_missing_text:
        if not backend.per_sample_missing:
            raise FedmmError(
                f"model={settings.model.name} needs every sample's image and text; modality.sample_missing_image / "
                f"modality.sample_missing_text work with the fusion models (model=fusion, fusion_minilm, fusion_tiny)"
            )
    if role == "info":
        model = backend.meta_model()
    else:
        model = backend.build_model(seed=settings.seed).to(resolve_device(settings.device))
    keys = travelling_keys(backend, model, strategy)
    local = personal_keys(settings.personalize, model, keys) if role in ("server", "site") else ()
    keys = [k for k in keys if k not in local]
    return Parts(
        settings=settings,
        data=data,
        backend=backend,
        model=model,
        keys=keys,
        strategy=strategy,
        clients=clients,
        client_val=client_val(data, clients) if clients is not None else None,
        client_test=client_test,
        local_keys=local,
    )
