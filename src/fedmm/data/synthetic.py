"""A deterministic image + text data set whose label is split across the two modalities.

Single-label: the image shows a square in one of `image_classes` colours, the text names one of `text_classes`
keywords, and the label is (colour, keyword) -> colour * text_classes + keyword. With both modalities a model can be
perfect; with the image only it can at best reach 1 / text_classes, with the text only 1 / image_classes.

Multilabel: `image_classes + text_classes` labels; each colour is present in the image with probability 1/2 and each
keyword in the text with probability 1/2 (at least one of each). Losing a modality loses its half of the labels.

Images are real uint8 RGB arrays with pixel noise, texts are real sentences with filler words, so both go through the
same image processing and tokenizer as any real data set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmm.data.dataset import MultimodalDataset, TaskData, CLIENT_TEST_HELP
from fedmm.registry import TASKS
from fedmm.errors import FedmmError
from fedmm.options import opt

PALETTE = np.array(
    [
        [220, 40, 40],
        [40, 180, 60],
        [50, 80, 220],
        [230, 200, 40],
        [170, 60, 200],
        [40, 200, 210],
        [240, 140, 30],
        [120, 120, 120],
    ],
    dtype=np.float32,
)
KEYWORDS = ["apple", "river", "engine", "violin", "castle", "garden", "rocket", "forest"]
FILLERS = [
    "the",
    "picture",
    "shows",
    "something",
    "near",
    "a",
    "small",
    "big",
    "old",
    "new",
    "quiet",
    "bright",
    "scene",
    "today",
    "with",
    "and",
    "of",
    "in",
]


@dataclass
class SyntheticConfig:
    name: str = opt("synthetic", "the registered name; chosen with the group itself (e.g. strategy=fedavg)")
    multilabel: bool = opt(False, "multi-hot labels (scored with F1) instead of one class per example")
    image_classes: int = opt(4, "colours (at most 8)")
    text_classes: int = opt(3, "keywords (at most 8)")
    num_train: int = opt(2000, "training examples generated (partitioned over the clients)")
    num_val: int = opt(300, "the server's validation examples")
    num_test: int = opt(600, "the server's test examples")
    image_size: int = opt(32, "generated images are image_size x image_size")
    noise: float = opt(20.0, "std of the pixel noise, in 0..255 units")
    client_test_fraction: float = opt(CLIENT_TEST_HELP[0], CLIENT_TEST_HELP[1])


def _make(cfg: SyntheticConfig, n: int, rng: np.random.Generator, names: tuple[str, ...]) -> MultimodalDataset:
    ni, nt, s = cfg.image_classes, cfg.text_classes, cfg.image_size
    if cfg.multilabel:
        img_on = rng.random((n, ni)) < 0.5
        img_on[np.arange(n), rng.integers(0, ni, n)] = True
        txt_on = rng.random((n, nt)) < 0.5
        txt_on[np.arange(n), rng.integers(0, nt, n)] = True
        labels = np.concatenate([img_on, txt_on], axis=1).astype(np.float32)
    else:
        img_c, txt_c = rng.integers(0, ni, n), rng.integers(0, nt, n)
        img_on = np.eye(ni, dtype=bool)[img_c]
        txt_on = np.eye(nt, dtype=bool)[txt_c]
        labels = (img_c * nt + txt_c).astype(np.int64)

    images = np.empty((n, s, s, 3), dtype=np.uint8)
    side = max(4, s // 3)
    for i in range(n):
        canvas = np.full((s, s, 3), 128.0, dtype=np.float32)
        for c in np.flatnonzero(img_on[i]):
            y, x = rng.integers(0, s - side + 1, 2)
            canvas[y : y + side, x : x + side] = PALETTE[c]
        canvas += rng.normal(0.0, cfg.noise, canvas.shape)
        images[i] = np.clip(canvas, 0, 255).astype(np.uint8)

    texts = []
    for i in range(n):
        words = list(rng.choice(FILLERS, size=int(rng.integers(4, 9))))
        for c in np.flatnonzero(txt_on[i]):
            words.insert(int(rng.integers(0, len(words) + 1)), KEYWORDS[c])
        texts.append(" ".join(words))
    return MultimodalDataset(
        labels=labels, label_names=names, texts=texts, images=images, image_ids=np.arange(n, dtype=np.int64)
    )


@TASKS.register("synthetic", SyntheticConfig)
def load_synthetic(cfg: SyntheticConfig, seed: int, centralized: bool = False) -> TaskData:
    if not (1 <= cfg.image_classes <= len(PALETTE) and 1 <= cfg.text_classes <= len(KEYWORDS)):
        raise FedmmError(f"task.image_classes must be 1..{len(PALETTE)} and task.text_classes 1..{len(KEYWORDS)}")
    colours = [f"c{c}" for c in range(cfg.image_classes)]
    if cfg.multilabel:
        names = tuple(colours + KEYWORDS[: cfg.text_classes])
    else:
        names = tuple(f"{c}/{w}" for c in colours for w in KEYWORDS[: cfg.text_classes])
    rng = np.random.default_rng([seed, 3])
    splits = [_make(cfg, n, rng, names) for n in (cfg.num_train, cfg.num_val, cfg.num_test)]
    metrics = ("micro_f1", "macro_f1") if cfg.multilabel else ("accuracy",)
    return TaskData(*splits, metrics=metrics)
