"""The in-memory multimodal data set every task produces and every backend consumes.

One representation for all tasks keeps partitioning, modality dropping and batching model-agnostic. Images live in a
table (`images`, uint8 H x W x 3, indexed by `image_ids`) because VQA-style data reuses one image for many questions.

Missing modalities are represented by *absence*: a data set without images has `images is None`, and a batch built
from it has no `pixel_values` at all. A client that lacks a modality therefore never holds, let alone receives, that
modality's inputs; the model fills the absent modality's embedding with zeros (see `backends/fusion.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from fedmm.errors import FedmmError
from fedmm.metrics import VQA_RULES
from fedmm.options import opt

MODALITIES = ("image", "text")


@dataclass(frozen=True)
class MultimodalDataset:
    labels: np.ndarray  # int64 [N] (single-label) or float32 [N, C] multi-hot (multilabel)
    label_names: tuple[str, ...]
    texts: Optional[Sequence[str]] = None  # N strings, or None when the text modality is absent
    images: Optional[np.ndarray] = None  # uint8 [M, H, W, 3] image table, or None when absent
    image_ids: Optional[np.ndarray] = None  # int64 [N] rows of `images`
    # Generative VQA: each example's reference answers (VQA v2: the 10 annotators'); None = the label's name.
    answers: Optional[Sequence[tuple[str, ...]]] = None
    # The class label-skewed partitioners split on, when the task declares one (VQA v2: the answer type);
    # None = derived from the labels (see `partition_labels`).
    groups: Optional[np.ndarray] = None
    # Per-sample missing modalities (modality.sample_missing_*): bool [N], False where the sample lacks it; None =
    # every sample has it. The fusion model gives such a sample a zero embedding for that modality.
    text_present: Optional[np.ndarray] = None
    image_present: Optional[np.ndarray] = None
    # Which labels noise.label_rate replaced (bool [N]), for the record; None = none.
    noisy_labels: Optional[np.ndarray] = None
    # The site each example belongs to, when the data names it (task=table task.site_column): the natural-id
    # split, one client per value; None = the partitioner decides.
    sites: Optional[np.ndarray] = None
    # How many of this client's training samples noise.missing_label_rate left without a label (and so out of the
    # data), for the record.
    unlabelled: int = 0
    # Generative VQA: how a generated answer is scored against `answers` (fedmm.metrics.VQA_RULES; task.vqa_metric).
    answer_rule: str = "official"

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.texts is not None and len(self.texts) != n:
            raise ValueError(f"{len(self.texts)} texts for {n} labels")
        if (self.images is None) != (self.image_ids is None):
            raise ValueError("images and image_ids go together")
        if self.image_ids is not None and len(self.image_ids) != n:
            raise ValueError(f"{len(self.image_ids)} image ids for {n} labels")
        for name in ("answers", "groups", "text_present", "image_present", "noisy_labels", "sites"):
            if getattr(self, name) is not None and len(getattr(self, name)) != n:
                raise ValueError(f"{len(getattr(self, name))} {name} for {n} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def modalities(self) -> frozenset[str]:
        return frozenset(
            m for m, present in (("image", self.images is not None), ("text", self.texts is not None)) if present
        )

    def subset(self, idx: np.ndarray) -> "MultimodalDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            labels=self.labels[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            image_ids=None if self.image_ids is None else self.image_ids[idx],
            answers=None if self.answers is None else [self.answers[i] for i in idx],
            groups=None if self.groups is None else self.groups[idx],
            text_present=None if self.text_present is None else self.text_present[idx],
            image_present=None if self.image_present is None else self.image_present[idx],
            noisy_labels=None if self.noisy_labels is None else self.noisy_labels[idx],
            sites=None if self.sites is None else self.sites[idx],
        )

    def references(self, i: int) -> list[str]:
        """The reference answers of example i (generative VQA)."""
        return list(self.answers[i]) if self.answers is not None else [self.label_names[int(self.labels[i])]]

    def with_modalities(self, keep: frozenset[str] | set[str]) -> "MultimodalDataset":
        """A view that holds only the modalities in `keep` (the others are dropped, not masked)."""
        unknown = set(keep) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}")
        return replace(
            self,
            texts=self.texts if "text" in keep else None,
            images=self.images if "image" in keep else None,
            image_ids=self.image_ids if "image" in keep else None,
            text_present=self.text_present if "text" in keep else None,
            image_present=self.image_present if "image" in keep else None,
        )

    def label_counts(self) -> np.ndarray:
        """Examples per label (multilabel: positives per label)."""
        if self.multilabel:
            return self.labels.sum(axis=0).astype(np.int64)
        return np.bincount(self.labels, minlength=self.num_labels)

    def partition_labels(self) -> np.ndarray:
        """The one class per example that label-skewed partitioners split on: the task's declared `groups`, else
        the label.

        Multilabel rule: an example counts as its *rarest* positive label (fewest positives in this data set), so
        rare labels are not swallowed by frequent ones; an example with no positive label gets an extra class
        `num_labels`.
        """
        if self.groups is not None:
            return self.groups.astype(np.int64)
        if not self.multilabel:
            return self.labels.astype(np.int64)
        freq = self.labels.sum(axis=0)
        rank = np.where(self.labels > 0, freq[None, :], np.inf)
        out = np.argmin(rank, axis=1).astype(np.int64)
        out[~(self.labels > 0).any(axis=1)] = self.num_labels
        return out


# task.client_test_fraction, shared by the tasks whose training split fedmm partitions
CLIENT_TEST_HELP = (
    0.1,
    "of each client's partition, held out as that site's own test data when client_eval is on (split before "
    "training, by the seed; partition.json records the counts)",
)


@dataclass(frozen=True)
class TaskData:
    """A task's splits: `train` is partitioned over clients, `val` is the server's for selection and tuning,
    `test` is the server's held-out evaluation set.

    Tasks whose training data already lives in per-site folders (MM-IMDb as `fedmm prepare` writes it) give
    `clients` instead: one data set per site, each holding only the modalities that site has, `client_val`, the
    site's own validation rows (or None), and `client_test`, its test rows (test.csv, or None). Their `train` then
    holds the sites' labels only (the inputs stay with the sites), for counts and label statistics.
    """

    train: MultimodalDataset
    val: MultimodalDataset
    test: MultimodalDataset
    metrics: tuple[str, ...]  # names computed by fedmm.metrics.compute
    clients: Optional[tuple[MultimodalDataset, ...]] = None
    client_val: Optional[tuple[Optional[MultimodalDataset], ...]] = None
    client_test: Optional[tuple[Optional[MultimodalDataset], ...]] = None
    # Data the clients' test sets are dealt from, round-robin (row i to client i mod K), instead of each client
    # holding out part of its partition (VQA v2's task.client_test=eval_shards: the FedUMM code's evaluation).
    client_test_pool: Optional[MultimodalDataset] = None
    tune_thresholds: bool = False  # multilabel: also report metrics at per-label thresholds tuned on `val`
    pos_weight: bool = False  # multilabel: weight positives by (negatives / positives) of the training labels
    zero_division: float = 1.0  # F1 of a label or example with no positives and no predictions (task.zero_division)


def vqa_metric_option(default: str):
    """`task.vqa_metric` as a generative VQA task declares it (its __post_init__ calls check_vqa_metric)."""
    return opt(
        default,
        "official (vqaEval.py rule for rule; a single reference answer scores 0) | normalized (both sides "
        "normalised, a single reference an exact match: easy-VQA) | fedumm (NVFlare FedUMM's min(#equal answers / 3, "
        "1) after strip and lower case)",
    )


def check_vqa_metric(rule: str) -> None:
    """`task.vqa_metric` is one of fedmm.metrics.VQA_RULES."""
    if rule not in VQA_RULES:
        raise FedmmError(f"task.vqa_metric must be one of {', '.join(VQA_RULES)} (got '{rule}')")


def zero_division(value: float) -> float:
    """`task.zero_division` when it is 0 or 1, the two values scikit-learn's F1 takes besides its warning."""
    if value not in (0, 1):
        raise FedmmError(f"task.zero_division={value} is out of range: it must be 0 or 1")
    return float(value)


def concat(parts: Sequence[MultimodalDataset]) -> MultimodalDataset:
    """One data set holding the examples of `parts` in order (all must have the same modalities and labels)."""
    first = parts[0]
    if any(p.modalities != first.modalities or p.label_names != first.label_names for p in parts):
        raise ValueError("concat needs data sets with the same modalities and label names")
    images = image_ids = None
    if first.images is not None:
        offsets = np.cumsum([0] + [len(p.images) for p in parts[:-1]])
        images = np.concatenate([p.images for p in parts])
        image_ids = np.concatenate([p.image_ids + o for p, o in zip(parts, offsets)])
    return MultimodalDataset(
        labels=np.concatenate([p.labels for p in parts]),
        label_names=first.label_names,
        texts=None if first.texts is None else [t for p in parts for t in p.texts],
        images=images,
        image_ids=image_ids,
        answers=None if first.answers is None else [a for p in parts for a in p.answers],
        groups=None if first.groups is None else np.concatenate([p.groups for p in parts]),
        answer_rule=first.answer_rule,
    )


def subsample(data: MultimodalDataset, limit: Optional[int], seed: int) -> MultimodalDataset:
    """A deterministic random subset of at most `limit` examples (None or <= 0 keeps all)."""
    if limit is None or limit <= 0 or limit >= len(data):
        return data
    rng = np.random.default_rng(seed)
    return data.subset(np.sort(rng.choice(len(data), size=limit, replace=False)))
