"""Finding things in the seed's MM-IMDb layout, which is what `fedmm prepare mmimdb` writes:

    <project>/
      dataset/client_<i>/{train,val,test}.csv   one folder per site (columns img_name, text, labels)
      dataset/client_<i>/modality.json          optional: which modalities the site has
      dataset/server/server_{val,test}.csv      the server's evaluation data (or under server_data/)
      all_in_one_dataset/labels.json            the genre names, in label order
      all_in_one_dataset/mmimdb_posters/        poster files named by the CSVs' img_name
      server_data/                              optional: server_data.zip, possibly unpacked as server_data/server_data/

Each site reads only its own folder (plus the posters its CSVs name), the way a real site would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from fedmm.data.dataset import MODALITIES
from fedmm.errors import FedmmError

CLIENT_DIR = re.compile(r"client_(\d+)$")
POSTER_DIRS = ("images", "mmimdb_posters", "posters", "img")  # looked for next to a CSV, then in the project
LABELS_ENV = "LABELS_JSON_PATH"


@dataclass(frozen=True)
class SeedLayout:
    project: Path  # the folder holding dataset/ (and all_in_one_dataset/, server_data/)
    dataset: Path  # the folder holding client_<i>/
    clients: tuple[Path, ...]  # client_0 .. client_<K-1>
    server: Optional[Path]  # the folder holding server_test.csv, when there is one


def _client_dirs(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CLIENT_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def find_layout(root: str | Path, option: str = "task.root") -> SeedLayout:
    """The layout under `root`, which may be the project folder or its `dataset/` folder."""
    if not str(root):
        raise FedmmError(
            f"task=mmimdb needs {option}=FOLDER: the folder `fedmm prepare mmimdb` wrote (or any "
            f"folder in the seed's layout, holding dataset/client_<i>/)"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FedmmError(
            f"{option}='{root}' is not a folder; give the folder `fedmm prepare mmimdb` wrote (the "
            f"one holding dataset/client_<i>/)"
        )
    for dataset, project in ((root / "dataset", root), (root, root.parent)):
        if dataset.is_dir() and (clients := _client_dirs(dataset)):
            numbers = [int(CLIENT_DIR.match(c.name).group(1)) for c in clients]
            if numbers != list(range(len(clients))):
                raise FedmmError(
                    f"{dataset}: client folders are numbered {numbers}; number them 0..K-1 (client_0, client_1, ...)"
                )
            return SeedLayout(project, dataset, tuple(clients), server_folder(project, dataset))
    raise FedmmError(
        f"no client_<i> folders in {root} or {root / 'dataset'}; write them with "
        f"`fedmm prepare mmimdb SOURCE {root} --num-clients K`"
    )


def server_folder(project: Path, dataset: Path) -> Optional[Path]:
    """Where server_test.csv is: dataset/server/, else anywhere under server_data/ (the shallowest), unpacking
    server_data/server_data.zip first when nothing is unpacked yet. Nested unpacks (server_data/server_data/...)
    are found the same way."""
    if (dataset / "server" / "server_test.csv").is_file():
        return dataset / "server"
    data = project / "server_data"
    if not data.is_dir():
        return None
    found = _shallowest(data, "server_test.csv")
    if found is None:
        for archive in sorted(data.glob("*.zip")):
            unzip(archive, data)
        found = _shallowest(data, "server_test.csv")
    return found.parent if found else None


def _shallowest(folder: Path, name: str) -> Optional[Path]:
    hits = [p for p in folder.rglob(name) if "__MACOSX" not in p.parts]
    return min(hits, key=lambda p: (len(p.parts), str(p))) if hits else None


def unzip(archive: Path, into: Path) -> None:
    """Unpack `archive` into `into`, all or nothing: members go to a temporary folder first, so a corrupt archive
    leaves `into` as it was. Members that would land outside `into` are refused."""
    tmp = into / f".unpacking-{archive.stem}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise FedmmError(f"{archive}: member '{member}' would unpack outside {into}; unpack it by hand")
            z.extractall(tmp)
        for entry in tmp.iterdir():
            if not (into / entry.name).exists():
                entry.rename(into / entry.name)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise FedmmError(
            f"{archive} is not a readable zip file ({type(e).__name__}: {e}); download it again, or "
            f"unpack it by hand into {into}"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"unpacked {archive}", flush=True)


def resolve_labels(explicit: str, layout: Optional[SeedLayout], option: str = "task.labels_json") -> Path:
    """labels.json: the explicit path, then $LABELS_JSON_PATH, then next to the data, then the first one under
    server_data/. A path given explicitly (or by the variable) must exist: a typo must not silently pick another."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FedmmError(f"{option}={explicit}: no such file")
        return path
    if os.environ.get(LABELS_ENV):
        path = Path(os.environ[LABELS_ENV]).expanduser()
        if not path.is_file():
            raise FedmmError(f"{LABELS_ENV}={path}: no such file; fix or unset the variable")
        return path
    looked = [f"{option} (not set)", f"${LABELS_ENV} (not set)"]
    if layout is not None:
        for path in (
            layout.dataset / "labels.json",
            layout.project / "labels.json",
            layout.project / "all_in_one_dataset" / "labels.json",
        ):
            if path.is_file():
                return path
            looked.append(str(path))
        data = layout.project / "server_data"
        found = _shallowest(data, "labels.json") if data.is_dir() else None
        if found:
            return found
        looked.append(f"{data}/**/labels.json")
    raise FedmmError(f"labels.json not found; looked in: {', '.join(looked)}. Set {option}=PATH or {LABELS_ENV}")


def read_labels(path: Path) -> tuple[str, ...]:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedmmError(
            f"{path}: cannot read labels ({type(e).__name__}: {e}); it must be a JSON list of genre names"
        ) from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise FedmmError(f'{path} must be a non-empty JSON list of genre names, e.g. ["Action", "Comedy"]')
    names = [n.strip() for n in names]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise FedmmError(f"{path} lists {dup} more than once; each genre once")
    return tuple(names)


def read_modalities(folder: Path) -> frozenset[str]:
    """A site's modalities from its optional modality.json: {"text": true, "image": false} or
    {"modalities": ["text"]}. Without the file the site has both."""
    path = folder / "modality.json"
    if not path.is_file():
        return frozenset(MODALITIES)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedmmError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if isinstance(spec, dict) and "modalities" in spec:
        spec = spec["modalities"]
    if isinstance(spec, dict) and set(spec) <= set(MODALITIES):
        mods = frozenset(m for m in MODALITIES if spec.get(m, True))
    elif isinstance(spec, list) and set(spec) <= set(MODALITIES):
        mods = frozenset(spec)
    else:
        mods = frozenset()
    if not mods:
        raise FedmmError(
            f'{path} must name at least one of {list(MODALITIES)}, as {{"text": true, "image": '
            f'false}} or {{"modalities": ["text"]}}'
        )
    return mods


def poster_folder(
    csv_folder: Path, project: Optional[Path], explicit: str = "", option: str = "task.image_dir"
) -> Path:
    """The folder the CSV's img_name values are relative to: the explicit one, else a posters folder next to the
    CSV (a site's own), else the project's shared one."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_dir():
            raise FedmmError(f"{option}={explicit}: no such folder")
        return path
    places = [csv_folder / d for d in POSTER_DIRS]
    if project is not None:
        places += [project / "all_in_one_dataset" / "mmimdb_posters"] + [project / d for d in POSTER_DIRS]
    for path in places:
        if path.is_dir():
            return path
    raise FedmmError(f"no posters folder for {csv_folder}; looked in: {', '.join(map(str, places))}. Set {option}=PATH")
