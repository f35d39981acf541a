"""`task=mmimdb`: multilabel genre prediction (23 genres) from a movie's poster and plot, on data in the seed's
layout (what `fedmm prepare mmimdb` writes; see `layout.py`).

Federated runs get one client per `client_<i>` folder, each with the modalities its `modality.json` grants and
without ever reading another site's files; the server evaluates on `server_test.csv` and selects / tunes on
`server_val.csv`. The centralized baseline trains on the union of the sites' training rows with both modalities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from fedmm.data.bad_samples import BadSamples
from fedmm.data.dataset import MODALITIES, MultimodalDataset, TaskData, concat, zero_division
from fedmm.data.mmimdb.layout import (
    SeedLayout,
    find_layout,
    poster_folder,
    read_labels,
    read_modalities,
    resolve_labels,
)
from fedmm.data.mmimdb.records import read_csv, to_dataset
from fedmm.registry import TASKS
from fedmm.errors import FedmmError
from fedmm.options import opt

METRICS = ("micro_f1", "macro_f1", "weighted_f1", "samples_f1")


@dataclass
class MMIMDbConfig:
    name: str = opt("mmimdb", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    root: str = opt(
        "", "the folder `fedmm prepare mmimdb` wrote, or any seed-layout folder holding dataset/client_<i>/"
    )
    labels_json: str = opt("", '"" = $LABELS_JSON_PATH, then next to the data, then the first under server_data/')
    image_dir: str = opt("", "posters folder, when neither the CSV's folder nor all_in_one_dataset/ has one")
    image_size: int = opt(224, "posters are decoded once, at load, and held at image_size x image_size")
    on_bad_sample: str = opt(
        "error", "error | skip (a missing/corrupt/oversized poster, an unknown genre, an empty CSV)"
    )
    max_text_chars: int = opt(20_000, "plots are cut here before tokenising (the encoder reads a few hundred tokens)")
    pos_weight: bool = opt(False, "BCE weights positives by negatives/positives of each client's training labels")
    tune_thresholds: bool = opt(False, "also report *_tuned metrics at per-genre thresholds tuned on server_val.csv")
    zero_division: float = opt(1.0, "F1 of a genre with no positives and no predictions: 1 (fedmm) or 0 (scikit-learn)")


def load_site(
    folder: Path,
    labels: tuple[str, ...],
    cfg: MMIMDbConfig,
    bad: BadSamples,
    project: Optional[Path] = None,
    modalities: Optional[frozenset[str]] = None,
    labels_file: str = "labels.json",
) -> tuple[MultimodalDataset, Optional[MultimodalDataset], Optional[MultimodalDataset]]:
    """(train, val, test) of one site folder (val.csv and test.csv are optional), with the modalities of its
    modality.json (or `modalities`). A site without images is never asked for posters."""
    mods = modalities or read_modalities(folder)
    posters = poster_folder(folder, project, cfg.image_dir) if "image" in mods else None

    def split(name: str) -> Optional[MultimodalDataset]:
        path = folder / f"{name}.csv"
        if not path.is_file():
            return None
        rows = read_csv(path, bad, posters, show=project)
        return to_dataset(rows, labels, mods, cfg.image_size, bad, labels_file, cfg.max_text_chars) if rows else None

    if not (folder / "train.csv").is_file():
        raise FedmmError(f"{folder} has no train.csv; every client folder needs one")
    train = split("train")
    if train is None or len(train) == 0:
        raise FedmmError(f"{folder / 'train.csv'} has no usable rows; a client needs training data")
    val, test = split("val"), split("test")
    return train, (val if val is not None and len(val) else None), (test if test is not None and len(test) else None)


def _server_split(
    layout: SeedLayout, name: str, labels: tuple[str, ...], cfg: MMIMDbConfig, bad: BadSamples, labels_file: str
) -> Optional[MultimodalDataset]:
    path = layout.server / f"{name}.csv" if layout.server else None
    if path is None or not path.is_file():
        return None
    posters = poster_folder(layout.server, layout.project, cfg.image_dir)
    rows = read_csv(path, bad, posters, show=layout.project)
    return (
        to_dataset(rows, labels, frozenset(MODALITIES), cfg.image_size, bad, labels_file, cfg.max_text_chars)
        if rows
        else None
    )


def count_sites(cfg: MMIMDbConfig) -> int:
    """The number of `client_<i>` folders: one client each."""
    return len(find_layout(cfg.root).clients)


@TASKS.register("mmimdb", MMIMDbConfig, site_count=count_sites)
def load_mmimdb(cfg: MMIMDbConfig, seed: int, centralized: bool = False) -> TaskData:
    zero_division(cfg.zero_division)  # refused before the data is read
    if not 8 <= cfg.image_size <= 2048:
        raise FedmmError(f"task.image_size must be in [8, 2048] (got {cfg.image_size})")
    if cfg.max_text_chars < 1:
        raise FedmmError(f"task.max_text_chars must be at least 1 (got {cfg.max_text_chars})")
    bad = BadSamples(cfg.on_bad_sample)
    layout = find_layout(cfg.root)
    labels_path = resolve_labels(cfg.labels_json, layout)
    labels = read_labels(labels_path)
    shown = str(labels_path)
    test = _server_split(layout, "server_test", labels, cfg, bad, shown)
    if test is None or len(test) == 0:
        raise FedmmError(
            f"no server evaluation set under {layout.project}: put server_test.csv in "
            f"{layout.dataset / 'server'} or under {layout.project / 'server_data'} "
            f"(`fedmm prepare mmimdb` writes one)"
        )
    val = _server_split(layout, "server_val", labels, cfg, bad, shown)
    if val is None:
        val = test.subset(np.zeros(0, dtype=np.int64))
    sites = [
        load_site(folder, labels, cfg, bad, layout.project, frozenset(MODALITIES) if centralized else None, shown)
        for folder in layout.clients
    ]
    bad.warn(str(layout.project))
    trains = [train for train, _, _ in sites]
    common = dict(
        val=val,
        test=test,
        metrics=METRICS,
        tune_thresholds=cfg.tune_thresholds,
        pos_weight=cfg.pos_weight,
        zero_division=zero_division(cfg.zero_division),
    )
    if centralized:
        return TaskData(train=concat(trains), **common)
    labels_only = concat([t.with_modalities(frozenset()) for t in trains])
    return TaskData(
        train=labels_only,
        clients=tuple(trains),
        client_val=tuple(v for _, v, _ in sites),
        client_test=tuple(t for _, _, t in sites),
        **common,
    )
