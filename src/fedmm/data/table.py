"""Your own image + text data (`task=table`): rows of a CSV, JSONL or Parquet file, or of a Hugging Face dataset,
each with an image, a text and a label.

- One file (`task.path`) or dataset (`task.dataset`) is partitioned over the clients like any other task; the
  server's test and validation rows come from `task.test_path` / `task.val_path` (`task.test_split` /
  `task.val_split` for a dataset), else are cut from it (`task.test_fraction`, `task.val_fraction`) by the seed.
- Per-site folders (`task.root`): each sub-folder holds one site's `train.{csv,jsonl,parquet}` (and optionally its
  own `val.*` and `test.*`, the site's held-out data for client_eval); one client per folder, and
  `task.test_path` is the server's test set.

The image column holds a path relative to the file's folder (never outside it), encoded image bytes (Parquet), or
an image (a Hugging Face `Image` feature). Single-label by default: the label column's values are the classes;
with `task.label_separator` (e.g. `|`) a label cell lists several classes and the task is multilabel, scored with
F1 (`task.zero_division`) instead of accuracy.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional

import numpy as np

from fedmm.data.bad_samples import BadSamples
from fedmm.data.dataset import MultimodalDataset, TaskData, concat, zero_division, CLIENT_TEST_HELP
from fedmm.data.hf import load_split
from fedmm.data.images import png_bytes, read_rgb
from fedmm.errors import FedmmError
from fedmm.registry import TASKS
from fedmm.options import opt

FORMATS = (".csv", ".jsonl", ".parquet")
MULTILABEL_METRICS = ("micro_f1", "macro_f1", "weighted_f1", "samples_f1")


@dataclass
class TableConfig:
    name: str = opt("table", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    path: str = opt("", "one CSV / JSONL / Parquet file, partitioned over the clients")
    root: str = opt("", "or per-site folders: root/<site>/train.{csv,jsonl,parquet} (+ val.*, test.*), one client each")
    dataset: str = opt(
        "", "or a Hugging Face dataset by name or local folder (datasets.load_dataset; its cache offline)"
    )
    split: str = opt("train", "the dataset's training split (split strings such as train[:80%] work)")
    test_split: str = opt("", 'the dataset\'s test split ("" = test_fraction of `split`)')
    val_split: str = opt("", 'the dataset\'s validation split ("" = val_fraction of `split`)')
    test_path: str = opt("", 'the server\'s test file ("" = test_fraction of `path`; required with `root`)')
    val_path: str = opt("", 'the server\'s validation file ("" = val_fraction of `path`; none with `root`)')
    test_fraction: float = opt(0.1, "of the rows, for the server's test set, when no test file or split is given")
    val_fraction: float = opt(0.1, "of the rows, for the server's validation set, when none is given")
    client_test_fraction: float = opt(CLIENT_TEST_HELP[0], CLIENT_TEST_HELP[1])
    image_column: str = opt("image", "a path relative to the file, image bytes, or a Hugging Face Image")
    text_column: str = opt("text", "the column holding the text")
    label_column: str = opt("label", "the column holding the label (or the labels, with label_separator)")
    site_column: str = opt(
        "",
        'natural-id split: the column naming each row\'s site (e.g. hospital_id), one client per value ("" = none)',
    )
    label_separator: str = opt("", '"" = single-label; e.g. "|" = multilabel, the cell lists the labels')
    labels: List[str] = opt([], "the label names in order ([] = those found, sorted)")
    image_size: int = opt(224, "images are decoded once, at load, to image_size x image_size")
    max_text_chars: int = opt(20_000, "texts are cut here before tokenising")
    on_bad_sample: str = opt("error", "error | skip (a missing or corrupt image, an unknown label, an empty row)")
    zero_division: float = opt(1.0, "multilabel F1 of a label with nothing to find: 1 (fedmm) or 0 (scikit-learn)")


@dataclass
class Row:
    image: Any  # Path | bytes | PIL image
    text: str
    labels: tuple[str, ...]
    where: str  # "file line N", for messages
    site: str = ""  # task.site_column's value


def _cell(row: dict[str, Any], column: str, where: str, kind: str) -> Any:
    if column not in row:
        raise FedmmError(
            f"{where}: no {kind} column '{column}' (has: {', '.join(map(str, row))}); set task.{kind}_column"
        )
    return row[column]


def _records(path: Path) -> Iterable[tuple[Any, str]]:
    """(row, where) of a CSV, JSONL or Parquet file; a row is a dict, except a JSONL line that holds another JSON
    value (a bad sample for `read_rows`). A file that is not UTF-8 text, or not Parquet, is a one-line error."""
    try:
        yield from _parsed(path)
    except UnicodeDecodeError as e:
        raise FedmmError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None


def _parsed(path: Path) -> Iterable[tuple[Any, str]]:
    if path.suffix == ".csv":
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield row, f"{path} line {reader.line_num}"
    elif path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except ValueError as e:  # JSONDecodeError, and an integer of more than 4300 digits
                        why = e.msg if isinstance(e, json.JSONDecodeError) else str(e).split(";")[0]
                        raise FedmmError(f"{path} line {n} is not JSON ({why}); fix that line") from None
                    yield row, f"{path} line {n}"
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise FedmmError(f"reading {path} needs pyarrow: pip install 'fedmm[parquet]'") from None
        try:
            table = pq.read_table(path)
        except Exception as e:  # noqa: BLE001 - pyarrow's ArrowInvalid / OSError: an empty, cut or foreign file
            first = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            raise FedmmError(f"{path} is not a readable Parquet file ({first}); write it again") from None
        for n, row in enumerate(table.to_pylist()):
            yield row, f"{path} row {n}"


def read_rows(
    records: Iterable[tuple[dict[str, Any], str]], cfg: TableConfig, folder: Optional[Path], bad: BadSamples
) -> list[Row]:
    """The rows with an image, a text and labels; a path is resolved against `folder` and must stay inside it."""
    rows = []
    for row, where in records:
        if not isinstance(row, dict):
            bad(f"{where}: not an object with {cfg.image_column}, {cfg.text_column} and {cfg.label_column}")
            continue
        image = _cell(row, cfg.image_column, where, "image")
        text = _cell(row, cfg.text_column, where, "text")
        label = _cell(row, cfg.label_column, where, "label")
        site = str(_cell(row, cfg.site_column, where, "site")).strip() if cfg.site_column else ""
        if cfg.site_column and site in ("", "None", "nan"):
            bad(f"{where}: no site in column '{cfg.site_column}'")
            continue
        if isinstance(image, dict):  # Hugging Face / Parquet image struct: {"bytes": ..., "path": ...}
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            if folder is None or not image.strip():
                bad(f"{where}: no image")
                continue
            try:
                resolved = (folder / image.strip()).resolve()
            except (ValueError, OSError, RuntimeError):  # a NUL byte; a symlink loop
                bad(f"{where}: image path {image[:80]!r} cannot be resolved (a NUL byte or a link loop)")
                continue
            if not resolved.is_relative_to(folder.resolve()):
                bad(f"{where}: image '{image[:80]}' points outside {folder}")
                continue
            image = resolved
        if image is None or label is None or (isinstance(label, str) and not label.strip()):
            bad(f"{where}: no {'image' if image is None else 'label'}")
            continue
        if not _label_value(label, bool(cfg.label_separator)):
            bad(f"{where}: the label is a {type(label).__name__} ({str(label)[:40]}), not a class name or number")
            continue
        if cfg.label_separator:
            cells = label if isinstance(label, list) else str(label).split(cfg.label_separator)
            labels = tuple(dict.fromkeys(str(c).strip() for c in cells if str(c).strip()))
        else:
            labels = (str(label).strip(),)
        rows.append(Row(image, "" if text is None else str(text)[: cfg.max_text_chars], labels, where, site))
    return rows


def _label_value(label: Any, multilabel: bool) -> bool:
    """A label cell fedmm can name a class by: a text, an integer or a finite number (multilabel: or a list of
    them); never a mapping, a bool or NaN."""
    if multilabel and isinstance(label, list):
        return all(_label_value(v, False) for v in label)
    if isinstance(label, bool) or not isinstance(label, (str, int, float)):
        return False
    return not isinstance(label, float) or label == label and abs(label) != float("inf")


def to_dataset(rows: list[Row], names: tuple[str, ...], cfg: TableConfig, bad: BadSamples) -> MultimodalDataset:
    index = {n: i for i, n in enumerate(names)}
    images, texts, labels, sites = [], [], [], []
    for r in rows:
        unknown = [label for label in r.labels if label not in index]
        if unknown:
            bad(f"{r.where}: label '{unknown[0]}' is not one of the task's labels ({', '.join(names[:10])}...)")
            continue
        try:
            images.append(_decode(r.image, cfg.image_size, r.where))
        except FedmmError as e:
            bad(f"{r.where}: {e}")
            continue
        texts.append(r.text)
        labels.append([index[label] for label in r.labels])
        sites.append(r.site)
    if cfg.label_separator:
        y = np.zeros((len(labels), len(names)), dtype=np.float32)
        for i, ls in enumerate(labels):
            y[i, ls] = 1.0
    else:
        y = np.array([ls[0] for ls in labels], dtype=np.int64)
    table = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    return MultimodalDataset(
        labels=y,
        label_names=names,
        texts=texts,
        images=table,
        image_ids=np.arange(len(labels), dtype=np.int64),
        sites=np.array(sites, dtype=object) if cfg.site_column else None,
    )


def _decode(image: Any, size: int, where: str) -> np.ndarray:
    if isinstance(image, (bytes, Path)):
        return read_rgb(image, size, name=f"{image}" if isinstance(image, Path) else f"bytes at {where}")
    if hasattr(image, "convert"):  # a PIL image (a Hugging Face Image feature decodes to one)
        return read_rgb(png_bytes(image), size, name=f"image at {where}")
    raise FedmmError(f"the image is a {type(image).__name__}; give a path, image bytes or an image")


def _data_file(folder: Path, stem: str) -> Optional[Path]:
    found = [folder / f"{stem}{ext}" for ext in FORMATS if (folder / f"{stem}{ext}").is_file()]
    if len(found) > 1:
        raise FedmmError(f"{folder} holds {' and '.join(p.name for p in found)}; keep one {stem} file")
    return found[0] if found else None


def _file(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if p.suffix not in FORMATS:
        raise FedmmError(f"{what}={path}: fedmm reads {', '.join(FORMATS)} files")
    if not p.is_file():
        raise FedmmError(f"{what}={path} not found")
    return p


def _file_rows(path: Path, cfg: TableConfig, bad: BadSamples) -> list[Row]:
    return read_rows(_records(path), cfg, path.parent, bad)


def _hf_rows(split: str, cfg: TableConfig, bad: BadSamples) -> list[Row]:
    ds = load_split(cfg.dataset, split)
    return read_rows(((row, f"{cfg.dataset}[{split}] row {n}") for n, row in enumerate(ds)), cfg, None, bad)


def site_folders(cfg: TableConfig) -> list[Path]:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise FedmmError(f"task.root={cfg.root} is not a folder")
    sites = sorted(p for p in root.iterdir() if p.is_dir() and _data_file(p, "train"))
    if not sites:
        raise FedmmError(f"no site folders under {root}: each needs a train.csv, train.jsonl or train.parquet")
    return sites


def count_sites(cfg: TableConfig) -> Optional[int]:
    """The clients the data itself names: its site folders, or the distinct values of `task.site_column` (read
    from that one column of task.path, before anything else is loaded)."""
    if cfg.root:
        return len(site_folders(cfg))
    if cfg.site_column:
        if not cfg.path:
            raise FedmmError(
                "task.site_column needs task.path (a CSV, JSONL or Parquet file that names each row's site)"
            )
        return len(site_values(_file(cfg.path, "task.path"), cfg.site_column))
    return None


def site_values(path: Path, column: str) -> list[str]:
    """The sorted distinct values of `column` in a table file (rows without it are left to `read_rows` to name)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        except (KeyError, ValueError, OSError) as e:
            raise FedmmError(f"{path}: no site column '{column}' ({type(e).__name__}); set task.site_column") from None
    else:
        values = [row.get(column) for row, _ in _records(path) if isinstance(row, dict)]
    found = sorted({str(v).strip() for v in values if v is not None and str(v).strip() not in ("", "None", "nan")})
    if not found:
        raise FedmmError(f"{path}: no row names a site in column '{column}'; set task.site_column to the site column")
    return found


def _cut(n: int, fraction: float, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`fraction` of all n rows, taken from the front of `order` (the rows still unassigned); and the rest."""
    k = int(round(fraction * n))
    return order[:k], order[k:]


@TASKS.register("table", TableConfig, site_count=count_sites, has_sites=lambda cfg: bool(cfg.root))
def load_table(cfg: TableConfig, seed: int, centralized: bool = False) -> TaskData:
    sources = [k for k in ("path", "root", "dataset") if getattr(cfg, k)]
    if len(sources) != 1:
        raise FedmmError(
            "task=table needs exactly one of task.path (a CSV/JSONL/Parquet file), task.root (per-site folders) "
            f"or task.dataset (a Hugging Face dataset); got {', '.join(sources) or 'none'}"
        )
    zd = zero_division(cfg.zero_division)
    for key in ("test_fraction", "val_fraction"):
        if not 0 <= getattr(cfg, key) < 1:
            raise FedmmError(f"task.{key}={getattr(cfg, key)} is out of range: it must be >= 0 and < 1")
    if not 8 <= cfg.image_size <= 2048:
        raise FedmmError(f"task.image_size must be in [8, 2048] (got {cfg.image_size})")
    bad = BadSamples(cfg.on_bad_sample)

    def rows_of(path: str, split: str, what: str) -> Optional[list[Row]]:
        if path:
            return _file_rows(_file(path, what), cfg, bad)
        if split:
            return _hf_rows(split, cfg, bad)
        return None

    sites: list[list[Row]] = []
    site_val: list[Optional[list[Row]]] = []
    site_test: list[Optional[list[Row]]] = []  # a site's own test.* (client_eval)
    if cfg.root:
        for folder in site_folders(cfg):
            sites.append(_file_rows(_data_file(folder, "train"), cfg, bad))
            for split, kept in (("val", site_val), ("test", site_test)):
                found = _data_file(folder, split)
                kept.append(_file_rows(found, cfg, bad) if found else None)
        if not cfg.test_path:
            raise FedmmError("task.root (per-site folders) needs task.test_path, the server's test file")
        test_rows, val_rows = rows_of(cfg.test_path, "", "task.test_path"), rows_of(cfg.val_path, "", "task.val_path")
        train_rows = [r for s in sites for r in s]
    else:
        rows = _file_rows(_file(cfg.path, "task.path"), cfg, bad) if cfg.path else _hf_rows(cfg.split, cfg, bad)
        order = np.random.default_rng([seed, 17]).permutation(len(rows))  # the server's rows: by the seed
        test_rows = rows_of(cfg.test_path, cfg.test_split if cfg.dataset else "", "task.test_path")
        if test_rows is None:
            cut, order = _cut(len(rows), cfg.test_fraction, order)
            test_rows = [rows[i] for i in cut]
        val_rows = rows_of(cfg.val_path, cfg.val_split if cfg.dataset else "", "task.val_path")
        if val_rows is None:
            cut, order = _cut(len(rows), cfg.val_fraction, order)
            val_rows = [rows[i] for i in cut]
        train_rows = [rows[i] for i in np.sort(order)]
    if not train_rows:
        raise FedmmError("task=table found no training rows")
    if not test_rows:
        raise FedmmError(
            "task=table has no test rows: give task.test_path (or a test split), or raise task.test_fraction"
        )
    names = tuple(cfg.labels) or tuple(sorted({label for r in train_rows for label in r.labels}))
    if len(names) < 2 and not cfg.label_separator:
        raise FedmmError(f"task=table found {len(names)} class in the training rows; a classifier needs at least 2")
    common = dict(
        test=to_dataset(test_rows, names, cfg, bad),
        val=to_dataset(val_rows or [], names, cfg, bad),
        metrics=MULTILABEL_METRICS if cfg.label_separator else ("accuracy",),
        zero_division=zd,
    )
    if cfg.root:
        trains = [to_dataset(s, names, cfg, bad) for s in sites]
        vals, tests = ([to_dataset(v, names, cfg, bad) if v else None for v in rows] for rows in (site_val, site_test))
        bad.warn(str(cfg.root))
        if centralized:
            return TaskData(train=concat(trains), **common)
        labels_only = concat([t.with_modalities(frozenset()) for t in trains])
        return TaskData(
            train=labels_only, clients=tuple(trains), client_val=tuple(vals), client_test=tuple(tests), **common
        )
    train = to_dataset(train_rows, names, cfg, bad)
    bad.warn(cfg.path or cfg.dataset)
    return TaskData(train=train, **common)
