"""easy-VQA (the `easy-vqa` PyPI package) as multimodal classification: image + question -> one of 13 answers
(`task=easyvqa`), or as generative VQA for vision-language models (`task=easyvqa_gen`).

Splits: `test` is the package's test questions (1,000 images); `val` holds out `task.val_fraction` of the package's
training *images* with all their questions (held out by image so that no validation image is seen in training);
`train` is the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedmm.data.dataset import MultimodalDataset, TaskData, CLIENT_TEST_HELP, check_vqa_metric, vqa_metric_option
from fedmm.data.images import read_rgb
from fedmm.registry import TASKS
from fedmm.errors import FedmmError
from fedmm.options import opt


@dataclass
class EasyVQAConfig:
    name: str = opt("easyvqa", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    root: str = opt("", 'folder with answers.txt and {train,test}/{questions.json,images/}; "" = the easy-vqa package')
    val_fraction: float = opt(0.1, "share of the training images (with their questions) held out for validation")
    client_test_fraction: float = opt(CLIENT_TEST_HELP[0], CLIENT_TEST_HELP[1])


def _default_root() -> Path:
    try:
        import easy_vqa
    except ImportError:
        raise FedmmError(
            "task=easyvqa needs the easy-vqa package: pip install easy-vqa==1.0 "
            "(or set task.root to a copy of its data folder)"
        ) from None
    return Path(easy_vqa.__file__).resolve().parent / "data"


def _read_split(root: Path, split: str, answer_index: dict[str, int]):
    qfile = root / split / "questions.json"
    if not qfile.is_file():
        raise FedmmError(f"easy-VQA questions not found at {qfile}; point task.root at the easy-VQA data folder")
    rows = json.loads(qfile.read_text())
    image_names = sorted({int(r[2]) for r in rows})
    table = np.stack([read_rgb(root / split / "images" / f"{i}.png") for i in image_names])
    row_of = {name: k for k, name in enumerate(image_names)}
    try:
        labels = np.array([answer_index[r[1]] for r in rows], dtype=np.int64)
    except KeyError as e:
        raise FedmmError(f"{qfile}: answer {e} is not in answers.txt") from None
    texts = [r[0] for r in rows]
    image_ids = np.array([row_of[int(r[2])] for r in rows], dtype=np.int64)
    return texts, labels, table, image_ids


@TASKS.register("easyvqa", EasyVQAConfig)
def load_easyvqa(cfg: EasyVQAConfig, seed: int, centralized: bool = False) -> TaskData:
    root = Path(cfg.root).expanduser() if cfg.root else _default_root()
    answers_file = root / "answers.txt"
    if not answers_file.is_file():
        raise FedmmError(f"easy-VQA answers.txt not found in {root}; point task.root at the easy-VQA data folder")
    answers = tuple(a.strip() for a in answers_file.read_text().splitlines() if a.strip())
    index = {a: i for i, a in enumerate(answers)}

    texts, labels, table, image_ids = _read_split(root, "train", index)
    full = MultimodalDataset(labels=labels, label_names=answers, texts=texts, images=table, image_ids=image_ids)
    rng = np.random.default_rng([seed, 11])
    n_val_images = int(round(cfg.val_fraction * len(table)))
    val_images = rng.choice(len(table), size=n_val_images, replace=False)
    is_val = np.isin(image_ids, val_images)
    texts, labels, table, image_ids = _read_split(root, "test", index)
    test = MultimodalDataset(labels=labels, label_names=answers, texts=texts, images=table, image_ids=image_ids)
    return TaskData(
        train=full.subset(np.flatnonzero(~is_val)),
        val=full.subset(np.flatnonzero(is_val)),
        test=test,
        metrics=("accuracy",),
    )


@dataclass
class EasyVQAGenConfig(EasyVQAConfig):
    name: str = opt("easyvqa_gen", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    vqa_metric: str = vqa_metric_option("normalized")  # easy-VQA has one answer per question

    def __post_init__(self) -> None:  # checked when the configuration is composed, before anything runs
        check_vqa_metric(self.vqa_metric)


@TASKS.register("easyvqa_gen", EasyVQAGenConfig)
def load_easyvqa_gen(cfg: EasyVQAGenConfig, seed: int, centralized: bool = False) -> TaskData:
    """easy-VQA as generative VQA: the same splits, the answer generated as text and scored with the VQA accuracy
    (`task.vqa_metric`: by default exact match after normalisation, easy-VQA having one answer per question)."""
    data = load_easyvqa(cfg, seed)
    rule = {"answer_rule": cfg.vqa_metric}
    return replace(
        data,
        train=replace(data.train, **rule),
        val=replace(data.val, **rule),
        test=replace(data.test, **rule),
        metrics=("vqa_accuracy",),
    )
