"""MM-IMDb rows: read from the seed's CSVs (or from the other layouts, see `sources.py`), checked, and turned into a
`MultimodalDataset` with the posters decoded once.

Every problem names its file and line. Row-level problems (a missing or corrupt poster, a genre not in labels.json,
an empty CSV) go through the bad-sample policy: an error by default, counted and skipped with `on_bad_sample=skip`.
File-level problems (a missing column) are always errors.
"""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fedmm.data.bad_samples import BadSamples
from fedmm.data.dataset import MultimodalDataset
from fedmm.data.images import read_rgb
from fedmm.errors import FedmmError

COLUMNS = ("img_name", "text", "labels")


@dataclass(frozen=True)
class Record:
    id: str
    text: str
    genres: tuple[str, ...]
    image: Path | bytes | None  # a poster file, or encoded bytes (Parquet); None when the row has no image
    where: str  # "dataset/client_0/train.csv line 3": what error messages call this row


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` stays inside `folder` once `..` and symbolic links are followed (an absolute name, a
    `../../x` or a link pointing elsewhere do not)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return False


def split_genres(value: str) -> tuple[str, ...]:
    """'Drama|Romance' -> ('Drama', 'Romance'); surrounding spaces and empty parts are dropped."""
    return tuple(g.strip() for g in value.split("|") if g.strip())


def read_csv(path: Path, bad: BadSamples, posters: Optional[Path], show: Optional[Path] = None) -> list[Record]:
    """The rows of one seed-layout CSV. `posters` is the folder img_name is relative to (None: images are not
    needed, e.g. a text-only site). `show` is the folder error messages print paths relative to."""
    name = str(path.relative_to(show)) if show and path.is_relative_to(show) else str(path)
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # plots can be long
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                bad(f"{name} is empty (no header, no rows)")
                return []
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise FedmmError(
                    f"{name}: missing column {', '.join(repr(c) for c in missing)} (has: "
                    f"{', '.join(header)}); MM-IMDb CSVs need the columns {', '.join(COLUMNS)}"
                )
            rows = []
            for row in reader:
                where = f"{name} line {reader.line_num}"
                img = (row["img_name"] or "").strip()
                if posters is not None and img and not inside(posters / img, posters):
                    bad(f"{where}: img_name '{img[:80]}' points outside the posters folder {posters}")
                    continue
                rows.append(
                    Record(
                        id=(row.get("id") or "").strip() or Path(img).stem or str(len(rows)),
                        text=row["text"] or "",
                        genres=split_genres(row["labels"] or ""),
                        image=(posters / img) if posters is not None and img else None,
                        where=where,
                    )
                )
    except UnicodeDecodeError as e:
        raise FedmmError(f"{name} is not UTF-8 text ({e}); save it as UTF-8 CSV") from None
    except csv.Error as e:
        raise FedmmError(f"{name}: malformed CSV ({e})") from None
    if not rows:
        bad(f"{name} is empty (a header but no rows)")
    return rows


def decode_images(sources: Sequence[Path | bytes], size: Optional[int]) -> list[np.ndarray | str]:
    """Each image decoded (and resized to size x size), or the one-line reason it could not be; in parallel,
    since PIL releases the GIL while decoding."""

    def one(src: Path | bytes) -> np.ndarray | str:
        try:
            return read_rgb(src, size)
        except FedmmError as e:
            return str(e)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, sources))


def to_dataset(
    records: Sequence[Record],
    label_names: tuple[str, ...],
    modalities: frozenset[str],
    image_size: int,
    bad: BadSamples,
    labels_file: str = "labels.json",
    max_text_chars: int = 20_000,
) -> MultimodalDataset:
    """Multi-hot labels, texts (cut at `max_text_chars`: the text encoder reads a few hundred tokens at most, and
    tokenising a multi-megabyte text costs gigabytes) and a poster table (one row per record) for the rows that pass
    the checks."""
    index = {g: i for i, g in enumerate(label_names)}
    keep, labels = [], []
    for r in records:
        unknown = [g for g in r.genres if g not in index]
        if unknown:
            bad(f"{r.where}: genre '{unknown[0]}' is not in {labels_file}")
            continue
        y = np.zeros(len(label_names), dtype=np.float32)
        y[[index[g] for g in r.genres]] = 1.0
        keep.append(r)
        labels.append(y)
    images = None
    if "image" in modalities:
        decoded = decode_images([r.image for r in keep if r.image is not None], image_size)
        results = iter(decoded)
        good = []
        for r in keep:
            img = "no img_name given" if r.image is None else next(results)
            if isinstance(img, str):
                bad(f"{r.where}: {img}")
                good.append(None)
            else:
                good.append(img)
        keep = [r for r, img in zip(keep, good) if img is not None]
        labels = [y for y, img in zip(labels, good) if img is not None]
        images = (
            np.stack([img for img in good if img is not None])
            if keep
            else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
        )
    return MultimodalDataset(
        labels=np.stack(labels) if labels else np.zeros((0, len(label_names)), dtype=np.float32),
        label_names=label_names,
        texts=[r.text[:max_text_chars] for r in keep] if "text" in modalities else None,
        images=images,
        image_ids=None if images is None else np.arange(len(keep), dtype=np.int64),
    )
