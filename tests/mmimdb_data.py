"""Miniature MM-IMDb data sets, in each layout users arrive with, made of real JPEG files.

Genres are learnable from both modalities: each genre has a poster colour and a plot keyword.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

GENRES = ["Drama", "Comedy", "Romance", "Thriller", "Action"]
COLOURS = {
    "Drama": (200, 30, 30),
    "Comedy": (30, 200, 30),
    "Romance": (30, 30, 200),
    "Thriller": (200, 200, 30),
    "Action": (30, 200, 200),
}
WORDS = {"Drama": "tears", "Comedy": "laughs", "Romance": "kiss", "Thriller": "chase", "Action": "explosion"}
FILLER = "a story about people in a city where things happen over one long summer".split()


def movies(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        genres = sorted(rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False).tolist())
        w, h = int(rng.integers(20, 40)), int(rng.integers(30, 60))  # posters are not square, sizes vary
        img = np.full((h, w, 3), 128, dtype=np.uint8)
        for k, g in enumerate(genres):
            img[k * h // 2 : (k + 1) * h // 2] = COLOURS[g]
        img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
        # a plot of hundreds of words, as in MM-IMDb; the genre words come early, within what a 64-token encoder reads
        words = list(rng.choice(FILLER, size=8)) + [WORDS[g] for g in genres]
        rng.shuffle(words)
        words += list(rng.choice(FILLER, size=int(rng.integers(150, 400))))
        out.append(
            {
                "id": f"tt{1000000 + i:07d}",
                "genres": genres,
                "image": img,
                "plots": ["short " + WORDS[genres[0]], " ".join(words)],
            }
        )  # the longest plot is the real one
    return out


def jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def official_split(ms: list[dict]) -> dict[str, list[dict]]:
    n = len(ms)
    return {"train": ms[: int(n * 0.6)], "dev": ms[int(n * 0.6) : int(n * 0.8)], "test": ms[int(n * 0.8) :]}


def write_original(root: Path, ms: list[dict]) -> Path:
    """The original release: mmimdb/split.json + mmimdb/dataset/<id>.json + <id>.jpeg."""
    data = root / "mmimdb" / "dataset"
    data.mkdir(parents=True)
    for m in ms:
        (data / f"{m['id']}.json").write_text(json.dumps({"plot": m["plots"], "genres": m["genres"], "title": m["id"]}))
        (data / f"{m['id']}.jpeg").write_bytes(jpeg(m["image"]))
    split = {k: [m["id"] for m in v] for k, v in official_split(ms).items()}
    (root / "mmimdb" / "split.json").write_text(json.dumps(split))
    return root


def write_parquet(root: Path, ms: list[dict]) -> Path:
    """A Parquet export, one file per split; the image as Hugging Face's {"bytes", "path"} struct in one file and as
    plain bytes in the others."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    for split, rows in official_split(ms).items():
        images = [jpeg(m["image"]) for m in rows]
        table = pa.table(
            {
                "imdb_id": [m["id"] for m in rows],
                "plot": [m["plots"] for m in rows],
                "genres": [m["genres"] for m in rows],
                "image": ([{"bytes": b, "path": None} for b in images] if split == "train" else images),
            }
        )
        pq.write_table(table, root / f"{split}-00000-of-00001.parquet")
    return root


def _csv(path: Path, rows: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_name", "text", "labels"])
        for m in rows:
            w.writerow([f"{m['id']}.jpeg", m["plots"][1], "|".join(m["genres"])])


def write_seed(root: Path, ms: list[dict], clients: int = 2, server: str = "csv") -> Path:
    """The seed's layout: dataset/client_<i>/{train,val,test}.csv, all_in_one_dataset/{labels.json,
    mmimdb_posters/}, and the server's test set as dataset/server/server_test.csv (server="csv"), as
    server_data/server_data.zip (server="zip"), or as a zip that unpacks to server_data/server_data/ (server="nested").
    """
    posters = root / "all_in_one_dataset" / "mmimdb_posters"
    posters.mkdir(parents=True)
    for m in ms:
        (posters / f"{m['id']}.jpeg").write_bytes(jpeg(m["image"]))
    (root / "all_in_one_dataset" / "labels.json").write_text(json.dumps(GENRES))
    split = official_split(ms)
    for k in range(clients):
        site = root / "dataset" / f"client_{k}"
        site.mkdir(parents=True)
        mine = split["train"][k::clients]
        _csv(site / "train.csv", mine[:-2])
        _csv(site / "val.csv", mine[-2:])
    if server == "csv":
        (root / "dataset" / "server").mkdir()
        _csv(root / "dataset" / "server" / "server_test.csv", split["test"])
        _csv(root / "dataset" / "server" / "server_val.csv", split["dev"])
        return root
    (root / "server_data").mkdir()
    prefix = "server_data/" if server == "nested" else ""
    tmp = root / "server_tmp.csv"
    with zipfile.ZipFile(root / "server_data" / "server_data.zip", "w") as z:
        _csv(tmp, split["test"])
        z.write(tmp, prefix + "server_test.csv")
        _csv(tmp, split["dev"])
        z.write(tmp, prefix + "server_val.csv")
        for m in split["test"] + split["dev"]:
            z.writestr(f"{prefix}img/{m['id']}.jpeg", jpeg(m["image"]))
    tmp.unlink()
    return root


def write_vqav2(root: Path, n_images: int = 12, per_image: int = 4, seed: int = 0) -> Path:
    """A miniature VQA v2 in the official layout: questions and annotations JSON (10 answers per question, with
    disagreement) and COCO-named JPEG files, for train2014 and val2014."""
    rng = np.random.default_rng(seed)
    colours = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
    qid = 0
    for split in ("train2014", "val2014"):
        (root / split).mkdir(parents=True)
        questions, annotations = [], []
        for k in range(n_images):
            image_id = 1000 * (split == "val2014") + k
            colour = list(colours)[k % 3]
            img = np.clip(np.full((40, 56, 3), colours[colour]) + rng.normal(0, 8, (40, 56, 3)), 0, 255)
            (root / split / f"COCO_{split}_{image_id:012d}.jpg").write_bytes(jpeg(img.astype(np.uint8)))
            for _q, (text, answer, kind) in enumerate(
                [
                    ("what color is it", colour, "other"),
                    ("is it red", "yes" if colour == "red" else "no", "yes/no"),
                    ("how many shapes", "one", "number"),
                    ("is there a dog", "no", "yes/no"),
                ][:per_image]
            ):
                qid += 1
                answers = [answer] * 8 + ["maybe", "1" if kind == "number" else answer]
                questions.append({"image_id": image_id, "question": text + "?", "question_id": qid})
                annotations.append(
                    {
                        "question_id": qid,
                        "image_id": image_id,
                        "answer_type": kind,
                        "multiple_choice_answer": answer,
                        "question_type": text.split()[0],
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)
                        ],
                    }
                )
        (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root
