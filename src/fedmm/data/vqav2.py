"""VQA v2 (Goyal et al. 2017) for generative VQA: image + question -> a generated answer, scored with the official VQA
accuracy against the 10 annotators' answers.

Sources:
- **the official files** under `task.root`: `v2_OpenEnded_mscoco_<split>_questions.json`,
  `v2_mscoco_<split>_annotations.json` and the COCO image folder `<split>/` (`COCO_<split>_<12-digit id>.jpg`), for
  `task.train_split` (train2014) and `task.eval_split` (val2014);
- **a Hugging Face dataset** by name or folder (`task.dataset=HuggingFaceM4/VQAv2`, what the FedUMM seed loads),
  through `datasets.load_dataset` (offline: its cache); `task.train_split` / `task.eval_split` are then its split
  strings (`train`, `validation[:50%]`; the official names train2014 / val2014 stand for train / validation);
- **a Parquet or `datasets` export**: Parquet files named by split (`train-*.parquet`, `validation-*.parquet`, as
  on the Hub), or a `DatasetDict.save_to_disk` folder (`train/*.arrow`, `validation/*.arrow`), with `question`,
  `image` (bytes or {"bytes", "path"}), `answers` (the 10 answers: strings, or {"answer": ...} records), optionally
  `multiple_choice_answer`, `answer_type`, `question_id`.

Splits: train = the training split; the evaluation split's *images* are divided into the server's val
(`task.val_fraction` of them, with all their questions) and test (the rest), so no image is in both.

The training target of a question is its `multiple_choice_answer` (the most common of the 10). Label-skewed
partitioning splits on `task.partition_by`: `answer_type` (yes/no, number, other), `top_answers` (each of the
`task.top_answers` most common training answers is its own class; every other answer shares one "rest" class) or
`answer` (every distinct answer its own class, as NVFlare's FedUMM code partitions).
Images are read from disk when a batch needs them (`ImageFiles`); a missing image file is a bad sample at load time.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedmm.data.bad_samples import BadSamples
from fedmm.data.dataset import MultimodalDataset, TaskData, CLIENT_TEST_HELP, check_vqa_metric, vqa_metric_option
from fedmm.data.hf import load_split
from fedmm.data.images import ImageFiles, cache_home, png_bytes
from fedmm.registry import TASKS
from fedmm.errors import FedmmError
from fedmm.options import opt

ANSWER_TYPES = ("yes/no", "number", "other")


@dataclass
class VQAv2Config:
    name: str = opt("vqav2", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    root: str = opt("", "the official JSON files + COCO image folders, or a folder of Parquet files")
    dataset: str = opt(
        "", "or a Hugging Face dataset by name or folder (datasets.load_dataset), e.g. HuggingFaceM4/VQAv2"
    )
    train_split: str = opt(
        "train2014", "the training split: official files' name (train2014), or a Hugging Face split string"
    )
    eval_split: str = opt(
        "val2014",
        "the evaluation split (server val + test): official name (val2014), or a split string such as validation[:50%]",
    )
    val_fraction: float = opt(0.1, "of the evaluation split's images (with their questions): the server's val split")
    client_test_fraction: float = opt(CLIENT_TEST_HELP[0], CLIENT_TEST_HELP[1])
    client_test: str = opt(
        "holdout",
        "holdout (each client holds out client_test_fraction of its partition) | eval_shards (the evaluation split "
        "dealt round-robin to the clients, each scoring its shard: NVFlare FedUMM's evaluation)",
    )
    partition_by: str = opt(
        "answer_type",
        "answer_type | top_answers | answer (each distinct multiple_choice_answer its own class, as NVFlare's "
        "FedUMM shard_dataset): the class Dirichlet partitioning splits on",
    )
    top_answers: int = opt(10, 'partition_by=top_answers: this many answer classes plus one "rest" class')
    image_size: int = opt(384, "images are resized to image_size x image_size when a batch reads them")
    on_bad_sample: str = opt("error", "error | skip (a question whose image file is missing)")
    vqa_metric: str = vqa_metric_option("official")

    def __post_init__(self) -> None:  # checked when the configuration is composed, before anything runs
        check_vqa_metric(self.vqa_metric)
        if self.client_test not in ("holdout", "eval_shards"):
            raise FedmmError(f"task.client_test must be holdout or eval_shards (got '{self.client_test}')")


def _json(path: Path) -> Any:
    if not path.is_file():
        raise FedmmError(
            f"VQA v2 file not found: {path}; point task.root at the folder holding the official "
            f"questions/annotations JSON files and the COCO image folders"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FedmmError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None


def _rows_from_json(root: Path, split: str, bad: BadSamples) -> list[dict]:
    questions = _json(root / f"v2_OpenEnded_mscoco_{split}_questions.json")["questions"]
    annotations = {a["question_id"]: a for a in _json(root / f"v2_mscoco_{split}_annotations.json")["annotations"]}
    rows = []
    for q in questions:
        a = annotations.get(q["question_id"])
        if a is None:
            bad(f"{split}: question {q['question_id']} has no annotation")
            continue
        image = root / split / f"COCO_{split}_{int(q['image_id']):012d}.jpg"
        if not image.is_file():
            bad(f"{split}: question {q['question_id']}: image file not found: {image}")
            continue
        rows.append(
            {
                "question": q["question"],
                "image": image,
                "answers": [x["answer"] for x in a["answers"]],
                "answer": a["multiple_choice_answer"],
                "answer_type": a["answer_type"],
            }
        )
    return rows


def _export_files(root: Path, split: str) -> list[Path]:
    """A split's files in an export: Parquet files named by split (`train-00000-of-00001.parquet`), or the Arrow
    files of a `datasets` `save_to_disk` folder (`train/data-00000-of-00001.arrow`)."""
    names = ("train", "training") if split == "train" else ("validation", "val", "test")
    return [p for p in sorted(root.rglob("*.parquet")) if p.stem.lower().split("-")[0] in names] + [
        p for p in sorted(root.rglob("*.arrow")) if p.parent.name.lower() in names
    ]


def _read_table(path: Path) -> list[dict]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise FedmmError("reading a Parquet / Arrow export needs pyarrow: pip install 'fedmm[parquet]'") from None
    try:
        if path.suffix == ".arrow":
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_stream(source).read_all().to_pylist()
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise FedmmError(
            f"{path}: not a readable {path.suffix[1:]} file ({type(e).__name__}: {str(e)[:160]})"
        ) from None


def _rows_from_export(root: Path, split: str, bad: BadSamples) -> list[dict]:
    files = _export_files(root, split)
    if not files:
        raise FedmmError(
            f"no {split} files under {root} (train-*.parquet / validation-*.parquet, or a "
            f"save_to_disk folder with train/ and validation/)"
        )
    cache = root / ".fedmm-images" / split
    rows = []
    for path in files:
        for i, r in enumerate(_read_table(path)):
            row = _export_row(r, f"{path.name} row {i}", cache / f"{path.parent.name}-{path.stem}-{i}.img", bad)
            if row:
                rows.append(row)
    return rows


def _export_row(r: dict, where: str, file: Path, bad: BadSamples) -> dict | None:
    """One question of an export or a Hugging Face dataset; its image is written to `file` once, so that batches
    read it lazily like the official layout's."""
    answers = [x["answer"] if isinstance(x, dict) else str(x) for x in r.get("answers") or []]
    image = r.get("image")
    image = image.get("bytes") if isinstance(image, dict) else image
    if hasattr(image, "save") and not file.is_file():  # a PIL image (a Hugging Face Image feature decodes to one)
        image = png_bytes(image)
    if not answers or not (isinstance(image, bytes) or file.is_file()) or not isinstance(r.get("question"), str):
        bad(f"{where}: needs a question, answers and the image")
        return None
    if not file.is_file():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(image)
    answer = r.get("multiple_choice_answer") or Counter(answers).most_common(1)[0][0]
    return {
        "question": r["question"],
        "image": file,
        "answers": answers,
        "answer": answer,
        "answer_type": r.get("answer_type") or ("yes/no" if answer in ("yes", "no") else "other"),
    }


def _rows_from_dataset(cfg: VQAv2Config, split: str, bad: BadSamples) -> list[dict]:
    """The questions of a Hugging Face dataset split (split strings such as validation[:50%] included)."""
    split = {"train2014": "train", "val2014": "validation"}.get(split, split)
    ds = load_split(cfg.dataset, split)
    safe = lambda text: re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    # the dataset's fingerprint names the folder, so that a changed dataset never reads another version's images
    cache = cache_home() / "vqav2" / safe(cfg.dataset) / f"{safe(split)}-{getattr(ds, '_fingerprint', '')[:16]}"
    rows = [_export_row(r, f"{cfg.dataset}[{split}] row {i}", cache / f"{i}.img", bad) for i, r in enumerate(ds)]
    return [r for r in rows if r]


def partition_groups(
    answers: list[str], answer_types: list[str], by: str, top: int, train_counts: Counter
) -> np.ndarray:
    """The class of each question for label-skewed partitioning (see the module docstring)."""
    if by == "answer_type":
        index = {t: k for k, t in enumerate(ANSWER_TYPES)}
        return np.array([index.get(t, len(ANSWER_TYPES) - 1) for t in answer_types], dtype=np.int64)
    if by == "top_answers":
        ranked = {a: k for k, (a, _) in enumerate(train_counts.most_common(top))}
        return np.array([ranked.get(a, top) for a in answers], dtype=np.int64)
    if by == "answer":  # the FedUMM code's classes: every distinct answer, numbered in sorted order
        index = {a: k for k, a in enumerate(sorted(set(answers)))}
        return np.array([index[a] for a in answers], dtype=np.int64)
    raise FedmmError(f"task.partition_by must be answer_type, top_answers or answer (got '{by}')")


def _dataset(
    rows: list[dict], vocab: dict[str, int], names: tuple[str, ...], cfg: VQAv2Config, counts: Counter
) -> MultimodalDataset:
    paths = sorted({r["image"] for r in rows})
    row_of = {p: k for k, p in enumerate(paths)}
    return MultimodalDataset(
        labels=np.array([vocab[r["answer"]] for r in rows], dtype=np.int64),
        label_names=names,
        texts=[r["question"] for r in rows],
        images=ImageFiles(paths, cfg.image_size),
        image_ids=np.array([row_of[r["image"]] for r in rows], dtype=np.int64),
        answers=[tuple(r["answers"]) for r in rows],
        groups=partition_groups(
            [r["answer"] for r in rows], [r["answer_type"] for r in rows], cfg.partition_by, cfg.top_answers, counts
        ),
        answer_rule=cfg.vqa_metric,
    )


@TASKS.register("vqav2", VQAv2Config)
def load_vqav2(cfg: VQAv2Config, seed: int, centralized: bool = False) -> TaskData:
    if bool(cfg.root) == bool(cfg.dataset):
        raise FedmmError(
            "task=vqav2 needs one of task.root=FOLDER (the official VQA v2 files, or a Parquet export) or "
            "task.dataset=NAME (a Hugging Face dataset, e.g. HuggingFaceM4/VQAv2)"
        )
    bad = BadSamples(cfg.on_bad_sample)
    if cfg.dataset:
        root = Path(cfg.dataset)
        train = _rows_from_dataset(cfg, cfg.train_split, bad)
        held = _rows_from_dataset(cfg, cfg.eval_split, bad)
    else:
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            raise FedmmError(f"task.root={cfg.root}: no such folder")
        export = any(root.rglob("*.parquet")) or any(root.rglob("*.arrow"))
        read = _rows_from_export if export else _rows_from_json
        train = read(root, "train" if export else cfg.train_split, bad)
        held = read(root, "validation" if export else cfg.eval_split, bad)
    bad.warn(str(root))
    if not train or not held:
        raise FedmmError(f"{root}: no usable {'training' if not train else 'evaluation'} questions")
    counts = Counter(r["answer"] for r in train)
    # answers of the evaluation split get label ids too (their text is the target when a centralized model is
    # scored on them); the ids carry no meaning beyond indexing label_names
    names = tuple(dict.fromkeys([a for a, _ in counts.most_common()] + [r["answer"] for r in held]))
    vocab = {a: k for k, a in enumerate(names)}
    images = sorted({r["image"] for r in held})
    rng = np.random.default_rng([seed, 13])
    val_images = {
        images[k] for k in rng.choice(len(images), size=int(round(cfg.val_fraction * len(images))), replace=False)
    }
    is_val = [r["image"] in val_images for r in held]
    return TaskData(
        train=_dataset(train, vocab, names, cfg, counts),
        val=_dataset([r for r, v in zip(held, is_val) if v], vocab, names, cfg, counts),
        test=_dataset([r for r, v in zip(held, is_val) if not v], vocab, names, cfg, counts),
        metrics=("vqa_accuracy",),
        client_test_pool=_dataset(held, vocab, names, cfg, counts) if cfg.client_test == "eval_shards" else None,
    )
