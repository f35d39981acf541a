"""The three layouts MM-IMDb users arrive with, read into `Record`s grouped by the official split (train/dev/test):

- **seed**: the seed's layout (`layout.py`); the sites' rows form the training pool, `server_val.csv` is dev and
  `server_test.csv` is test;
- **original**: the original release, `split.json` (official train/dev/test ids) + `dataset/<id>.json` (a `plot`
  list and `genres`) + `dataset/<id>.jpeg`. Of several plots the *longest* is used (the fullest summary; the usual
  choice, e.g. in MMBT's preprocessing);
- **parquet**: one or more Parquet files with the poster as bytes and columns for plot text and genres, the split
  given by a `split` column or by the file name (train / dev|val|validation / test).

Without a labels.json, the original and Parquet layouts use MM-IMDb's 23 genres; the release also tags a few movies
with genres the data set's task excludes (News, Adult, Talk-Show, Reality-TV), and those tags are dropped (counted).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from fedmm.data.bad_samples import BadSamples
from fedmm.data.mmimdb.layout import find_layout, poster_folder, read_labels, resolve_labels
from fedmm.data.mmimdb.records import Record, read_csv, split_genres
from fedmm.errors import FedmmError

GENRES = (
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Crime",
    "Action",
    "Adventure",
    "Horror",
    "Documentary",
    "Mystery",
    "Sci-Fi",
    "Fantasy",
    "Family",
    "Biography",
    "War",
    "History",
    "Music",
    "Animation",
    "Musical",
    "Western",
    "Sport",
    "Short",
    "Film-Noir",
)
NOT_IN_TASK = frozenset({"News", "Adult", "Talk-Show", "Reality-TV"})
SPLITS = ("train", "dev", "test")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "test": "test",
}
TEXT_COLUMNS = ("plot", "text", "overview", "plot_outline", "description")
GENRE_COLUMNS = ("genres", "genre", "labels", "label")
IMAGE_COLUMNS = ("image", "poster", "img", "image_bytes")
ID_COLUMNS = ("id", "imdb_id", "movie_id")


@dataclass
class Source:
    layout: str  # seed | original | parquet
    splits: dict[str, list[Record]]  # train / dev / test
    labels: tuple[str, ...]
    labels_from: str  # where the label list came from, for messages
    dropped_tags: dict[str, int]  # excluded-genre tags removed, per genre


def detect(root: Path) -> str:
    if root.is_file() and root.suffix == ".parquet" or root.is_dir() and any(root.rglob("*.parquet")):
        return "parquet"
    if (root / "split.json").is_file() or (root / "mmimdb" / "split.json").is_file():
        return "original"
    if root.is_dir() and ((root / "dataset").is_dir() or any(root.glob("client_*"))):
        return "seed"
    raise FedmmError(
        f"{root} is not an MM-IMDb layout fedmm knows: expected split.json + dataset/ (the original "
        f"release), *.parquet files, or dataset/client_<i>/ CSVs (the seed's layout)"
    )


def read_source(root: str | Path, bad: BadSamples, labels_json: str = "") -> Source:
    root = Path(root).expanduser()
    if not root.exists():
        raise FedmmError(f"{root} does not exist; give the folder holding your MM-IMDb files")
    kind = detect(root)
    if kind == "seed":
        return _read_seed(root, bad, labels_json)
    labels, labels_from = (
        (read_labels(Path(labels_json).expanduser()), labels_json) if labels_json else (GENRES, "MM-IMDb's 23 genres")
    )
    rows = _read_original(root, bad) if kind == "original" else _read_parquet(root, bad)
    src = Source(kind, rows, labels, labels_from, {})
    if not labels_json:  # the release's excluded genres are not errors against the built-in list
        for split, recs in src.splits.items():
            src.splits[split] = [_drop_excluded(r, src.dropped_tags) for r in recs]
    return src


def _drop_excluded(r: Record, counts: dict[str, int]) -> Record:
    gone = [g for g in r.genres if g in NOT_IN_TASK]
    for g in gone:
        counts[g] = counts.get(g, 0) + 1
    return replace(r, genres=tuple(g for g in r.genres if g not in NOT_IN_TASK)) if gone else r


def _read_seed(root: Path, bad: BadSamples, labels_json: str) -> Source:
    layout = find_layout(root, option="SOURCE")
    labels_path = resolve_labels(labels_json, layout, option="--labels")
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for folder in layout.clients:
        posters = poster_folder(folder, layout.project)
        for name in ("train", "val", "test"):
            if (folder / f"{name}.csv").is_file():
                splits["train"] += read_csv(folder / f"{name}.csv", bad, posters, show=layout.project)
    if layout.server is not None:
        posters = poster_folder(layout.server, layout.project)
        for name, split in (("server_val", "dev"), ("server_test", "test")):
            if (layout.server / f"{name}.csv").is_file():
                splits[split] = read_csv(layout.server / f"{name}.csv", bad, posters, show=layout.project)
    return Source("seed", splits, read_labels(labels_path), str(labels_path), {})


def _read_original(root: Path, bad: BadSamples) -> dict[str, list[Record]]:
    base = root if (root / "split.json").is_file() else root / "mmimdb"
    try:
        ids = json.loads((base / "split.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedmmError(f"{base / 'split.json'}: cannot read it ({type(e).__name__}: {e})") from None
    missing = [s for s in SPLITS if s not in ids]
    if not isinstance(ids, dict) or missing:
        raise FedmmError(
            f"{base / 'split.json'} must map train, dev and test to lists of movie ids (missing: {', '.join(missing)})"
        )
    data = base / "dataset"
    splits: dict[str, list[Record]] = {}
    for split in SPLITS:
        recs = []
        for movie in ids[split]:
            movie = str(movie)
            path = data / f"{movie}.json"
            where = f"dataset/{movie}.json"
            try:
                meta = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                bad(f"{where}: file missing (listed in split.json '{split}')")
                continue
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                bad(f"{where}: cannot read it ({type(e).__name__}: {e})")
                continue
            plots = meta.get("plot") if isinstance(meta, dict) else None
            plots = [plots] if isinstance(plots, str) else [p for p in plots or [] if isinstance(p, str)]
            genres = meta.get("genres") if isinstance(meta, dict) else None
            if not plots or not isinstance(genres, list):
                bad(f"{where}: needs a 'plot' (list of strings) and 'genres' (list)")
                continue
            recs.append(
                Record(
                    id=movie,
                    text=max(plots, key=len),
                    genres=tuple(str(g).strip() for g in genres),
                    image=data / f"{movie}.jpeg",
                    where=where,
                )
            )
        splits[split] = recs
    return splits


def _column(names: list[str], wanted: tuple[str, ...], what: str, path: Path, required: bool = True) -> Optional[str]:
    lower = {n.lower(): n for n in names}
    for w in wanted:
        if w in lower:
            return lower[w]
    if required:
        raise FedmmError(f"{path.name}: no {what} column (looked for {', '.join(wanted)}; has: {', '.join(names)})")
    return None


def _split_of_file(path: Path) -> Optional[str]:
    for token in re.split(r"[^a-z]+", path.stem.lower()):
        if token in SPLIT_NAMES:
            return SPLIT_NAMES[token]
    return None


def _parquet_rows(pq, path: Path) -> Iterator[dict[str, Any]]:
    """The rows of one file, a batch at a time (the posters of a full export do not fit in memory twice)."""
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
            yield from batch.to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise FedmmError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None


def _read_parquet(root: Path, bad: BadSamples) -> dict[str, list[Record]]:
    try:
        import pyarrow.parquet as pq  # optional: the `parquet` extra
    except ImportError:
        raise FedmmError("reading Parquet needs pyarrow: pip install 'fedmm[parquet]' (or pyarrow)") from None
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for path in files:
        try:
            names = pq.read_schema(path).names
        except (OSError, ValueError) as e:
            raise FedmmError(f"{path}: not a readable Parquet file ({type(e).__name__}: {str(e)[:160]})") from None
        text_col = _column(names, TEXT_COLUMNS, "plot text", path)
        genre_col = _column(names, GENRE_COLUMNS, "genres", path)
        image_col = _column(names, IMAGE_COLUMNS, "image", path)
        id_col = _column(names, ID_COLUMNS, "id", path, required=False)
        split_col = _column(names, ("split",), "split", path, required=False)
        file_split = _split_of_file(path)
        if split_col is None and file_split is None:
            raise FedmmError(
                f"{path.name}: cannot tell its split; name the file train/dev/test (e.g. "
                f"train-00000.parquet) or add a 'split' column"
            )
        for i, row in enumerate(_parquet_rows(pq, path)):
            where = f"{path.name} row {i}"
            split = SPLIT_NAMES.get(str(row[split_col]).lower()) if split_col else file_split
            if split is None:
                bad(f"{where}: unknown split '{row[split_col]}' (use train, dev or test)")
                continue
            text = row[text_col]
            text = max(text, key=len) if isinstance(text, list) and text else text
            genres = row[genre_col]
            genres = split_genres(genres.replace(",", "|")) if isinstance(genres, str) else genres
            image = row[image_col]
            if isinstance(image, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
                image = image.get("bytes") or image.get("path")
            if isinstance(image, str):
                image = path.parent / image
            if (
                not isinstance(text, str)
                or not isinstance(genres, (list, tuple))
                or not all(isinstance(g, str) for g in genres)
                or not isinstance(image, (bytes, Path))
            ):
                bad(f"{where}: needs plot text (string), genres (names) and an image (bytes)")
                continue
            rid = str(row[id_col]) if id_col and row[id_col] is not None else f"{split}-{path.stem}-{i}"
            splits[split].append(
                Record(id=rid, text=text, genres=tuple(g.strip() for g in genres), image=image, where=where)
            )
    return splits
