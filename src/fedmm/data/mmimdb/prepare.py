"""`fedmm prepare mmimdb SOURCE OUT`: any MM-IMDb layout in, the seed's layout out, split over K sites.

The official train split is partitioned over the sites (IID or Dirichlet over each movie's rarest genre); each site
keeps `val_fraction` of its share as its own validation rows (val.csv) and, when asked, `test_fraction` as test.csv.
The official dev and test splits become the server's server_val.csv and server_test.csv. Every row is checked
(genres, posters decoded in full) before anything is written, and the output appears all at once: a failure leaves
OUT as it was.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fedmm.data.bad_samples import BadSamples
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.modality import assign_modalities, parse_client_modalities
from fedmm.data.mmimdb.records import Record, decode_images, inside
from fedmm.data.mmimdb.sources import SPLITS, read_source
from fedmm.data.partition import dirichlet_partition, iid_partition
from fedmm.data.summary import format_partition, partition_summary
from fedmm.errors import FedmmError

OUTPUTS = ("dataset", "all_in_one_dataset")
POSTERS = Path("all_in_one_dataset") / "mmimdb_posters"


def check_records(
    records: list[Record], labels: tuple[str, ...], bad: BadSamples, labels_from: str, source: Path
) -> list[Record]:
    """The records whose genres are all known and whose poster lies inside `source` and decodes in full (prepare
    links or copies posters into OUT: never a file from elsewhere)."""
    known = set(labels)
    kept = []
    for r in records:
        unknown = [g for g in r.genres if g not in known]
        if unknown:
            bad(f"{r.where}: genre '{unknown[0]}' is not in {labels_from}")
        elif r.image is None:
            bad(f"{r.where}: no image")
        elif isinstance(r.image, Path) and not inside(r.image, source):
            bad(f"{r.where}: its poster {r.image} lies outside {source}")
        else:
            kept.append(r)
    checked = decode_images([r.image for r in kept], size=8)  # a full decode; the small copy is thrown away
    out = []
    for r, result in zip(kept, checked):
        if isinstance(result, str):
            bad(f"{r.where}: {result}")
        else:
            out.append(r)
    return out


def _poster_name(r: Record) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", r.id)
    if isinstance(r.image, bytes):
        with Image.open(io.BytesIO(r.image)) as im:
            ext = (im.format or "img").lower()
        return f"{stem}.{'jpeg' if ext == 'jpeg' else ext}"
    return stem + (r.image.suffix or ".jpeg")


def _place_poster(r: Record, dst: Path) -> None:
    if isinstance(r.image, bytes):
        dst.write_bytes(r.image)
        return
    try:  # a hard link costs no space; across file systems, copy
        os.link(r.image, dst)
    except OSError:
        shutil.copyfile(r.image, dst)


def _write_csv(path: Path, rows: list[tuple[Record, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["img_name", "text", "labels", "id"])
        for r, img in rows:
            w.writerow([img, r.text, "|".join(r.genres), r.id])


def _split_site(n: int, val_fraction: float, test_fraction: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    order = rng.permutation(n)
    n_val, n_test = int(round(val_fraction * n)), int(round(test_fraction * n))
    if n - n_val - n_test < 1:
        n_val = n_test = 0
    return {
        "val": np.sort(order[:n_val]),
        "test": np.sort(order[n_val : n_val + n_test]),
        "train": np.sort(order[n_val + n_test :]),
    }


def prepare_mmimdb(
    source: str,
    out: str,
    num_clients: int,
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 42,
    modalities: str = "",
    labels_json: str = "",
    on_bad_sample: str = "error",
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    min_size: int = 2,
) -> Path:
    out_dir = Path(out).expanduser()
    taken = [out_dir / o for o in OUTPUTS if (out_dir / o).exists()]
    if taken:
        raise FedmmError(f"{taken[0]} already exists; choose an empty OUT (nothing there is overwritten)")
    if num_clients < 1:
        raise FedmmError(f"--num-clients must be at least 1 (got {num_clients})")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise FedmmError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if partition not in ("iid", "dirichlet"):
        raise FedmmError(f"--partition must be iid or dirichlet (got '{partition}')")
    mods = assign_modalities(num_clients, parse_client_modalities(modalities), 0.0, "random", seed)

    bad = BadSamples(on_bad_sample, option="--on-bad-sample")
    src = read_source(source, bad, labels_json)
    root = Path(source).expanduser()
    root = root if root.is_dir() else root.parent
    rows = {s: check_records(src.splits[s], src.labels, bad, src.labels_from, root) for s in SPLITS}
    bad.warn(str(source))
    if src.dropped_tags:
        print(
            "dropped genre tags outside MM-IMDb's 23: "
            + ", ".join(f"{g} x{n}" for g, n in sorted(src.dropped_tags.items())),
            flush=True,
        )
    if not rows["train"] or not rows["test"]:
        raise FedmmError(f"{source}: no usable {'train' if not rows['train'] else 'test'} rows")

    index = {g: i for i, g in enumerate(src.labels)}
    y = np.zeros((len(rows["train"]), len(src.labels)), dtype=np.float32)
    for i, r in enumerate(rows["train"]):
        y[i, [index[g] for g in r.genres]] = 1.0
    pool = MultimodalDataset(labels=y, label_names=src.labels)
    parts = (
        iid_partition(len(pool), num_clients, seed)
        if partition == "iid"
        else dirichlet_partition(pool.partition_labels(), num_clients, alpha, seed, min_size=min_size)
    )

    tmp = out_dir / ".fedmm-prepare"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / POSTERS).mkdir(parents=True)
    try:
        names: dict[int, str] = {}  # record -> its poster's file name under OUT
        for r in (r for s in SPLITS for r in rows[s]):
            name, n = _poster_name(r), 1
            while (tmp / POSTERS / name).exists():  # two movies with one id: keep both posters
                stem, dot, ext = _poster_name(r).rpartition(".")
                name, n = f"{stem}-{n}.{ext}", n + 1
            names[id(r)] = name
            _place_poster(r, tmp / POSTERS / name)
        (tmp / "all_in_one_dataset" / "labels.json").write_text(json.dumps(list(src.labels), indent=1) + "\n")
        rng = np.random.default_rng([seed, 5])
        for k, (part, m) in enumerate(zip(parts, mods)):
            site = tmp / "dataset" / f"client_{k}"
            site.mkdir(parents=True)
            recs = [rows["train"][i] for i in part]
            for name, idx in _split_site(len(recs), val_fraction, test_fraction, rng).items():
                if len(idx):
                    _write_csv(site / f"{name}.csv", [(recs[i], names[id(recs[i])]) for i in idx])
            (site / "modality.json").write_text(json.dumps({"text": "text" in m, "image": "image" in m}) + "\n")
        server = tmp / "dataset" / "server"
        server.mkdir()
        for split, name in (("dev", "server_val"), ("test", "server_test")):
            if rows[split]:
                _write_csv(server / f"{name}.csv", [(r, names[id(r)]) for r in rows[split]])
        for o in OUTPUTS:
            (tmp / o).rename(out_dir / o)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary = partition_summary([pool.subset(p) for p in parts])
    for s, m in zip(summary, mods):
        s["modalities"] = sorted(m)
    print(
        f"MM-IMDb ({src.layout} layout, labels: {src.labels_from}): {len(rows['train'])} train rows over "
        f"{num_clients} sites, {len(rows['dev'])} server val, {len(rows['test'])} server test",
        flush=True,
    )
    print(format_partition(summary))
    print(
        f"wrote {out_dir}/dataset/ and {out_dir}/all_in_one_dataset/; train with:\n"
        f"  fedmm run experiment=mmimdb task.root={out_dir}",
        flush=True,
    )
    return out_dir
