"""Evaluation metrics as pure numpy functions (no model, no torch).

Single-label: `accuracy`. Multilabel (threshold 0.5 on sigmoid probabilities): `micro_f1` (pool all label decisions)
and `macro_f1` (mean of per-label F1; a label with no positives and no predictions in the evaluated set counts as
F1 = 1, since the model made no mistake on it).
"""
from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(labels))) if len(labels) else 0.0


def f1_counts(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-label true positives, false positives, false negatives of binary [N, C] arrays."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = (pred & labels).sum(0)
    fp = (pred & ~labels).sum(0)
    fn = (~pred & labels).sum(0)
    return tp, fp, fn


def micro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, fn = (x.sum() for x in f1_counts(pred, labels))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 1.0


def macro_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, fn = f1_counts(pred, labels)
    denom = 2 * tp + fp + fn
    per_label = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(per_label.mean()) if per_label.size else 0.0


def compute(names: tuple[str, ...] | list[str], logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The named metrics from model logits. Multilabel when `labels` is 2-D (multi-hot)."""
    out = {}
    if labels.ndim == 2:
        pred = logits > 0.0  # sigmoid(x) > 0.5
    else:
        pred = logits.argmax(axis=1)
    for name in names:
        fn = {"accuracy": accuracy, "micro_f1": micro_f1, "macro_f1": macro_f1}.get(name)
        if fn is None:
            raise ValueError(f"unknown metric {name}")
        out[name] = fn(pred, labels)
    return out
