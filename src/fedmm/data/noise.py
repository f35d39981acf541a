"""Label noise and missing labels (FedMultimodal's robustness axes): `noise.label_rate` of a client's training
labels replaced at random, and `noise.missing_label_rate` of its training samples without a label, for the clients
in `noise.clients` (null: all). Deterministic in (seed, client)."""

from __future__ import annotations

import numpy as np


def noisy_labels(
    labels: np.ndarray, num_labels: int, rate: float, seed: int, client: int
) -> tuple[np.ndarray, np.ndarray]:
    """(new labels, which changed). Single-label: each label is, with probability `rate`, replaced by a class drawn
    uniformly from all `num_labels` (so about rate / num_labels of the draws land on the true class and change
    nothing). Multilabel (2-D multi-hot): each label bit is flipped with probability `rate`; a row changed when any
    bit did."""
    rng = np.random.default_rng([seed, 37, client])
    if labels.ndim == 2:
        flip = rng.random(labels.shape) < rate
        new = np.where(flip, 1.0 - labels, labels).astype(labels.dtype)
        return new, (new != labels).any(axis=1)
    hit = rng.random(len(labels)) < rate
    draw = rng.integers(0, num_labels, len(labels))
    new = np.where(hit, draw, labels).astype(labels.dtype)
    return new, new != labels


def labelled(n: int, rate: float, seed: int, client: int) -> np.ndarray:
    """bool [n]: which of a client's n training samples keep their label; each loses it with probability `rate`.
    fedmm's backends learn only from labelled samples (none has an unsupervised path), so the others are left out
    of the loss, that is, of the client's training data; at least one always keeps its label."""
    keep = np.random.default_rng([seed, 43, client]).random(n) >= rate
    if n and not keep.any():
        keep[0] = True
    return keep
