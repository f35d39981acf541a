"""Evaluation metrics as pure numpy functions (no model, no torch).

Single-label: `accuracy`. Multilabel (threshold 0.5 on sigmoid probabilities, or per-label thresholds): `micro_f1`
(pool all label decisions), `macro_f1` (mean of per-label F1), `weighted_f1` (per-label F1 weighted by the label's
positives), `samples_f1` (mean over examples of each example's F1). Where a label (or an example) has no positives
and no predictions, its F1 counts as 1: the model made no mistake on it.

`tune_thresholds` picks per-label thresholds on a validation split (never the test split).
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
    per_label = _f1(*f1_counts(pred, labels))
    return float(per_label.mean()) if per_label.size else 0.0


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def weighted_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, fn = f1_counts(pred, labels)
    support = tp + fn
    return float((_f1(tp, fp, fn) * support).sum() / support.sum()) if support.sum() else 0.0


def samples_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    tp, fp, fn = f1_counts(np.asarray(pred).T, np.asarray(labels).T)  # per example instead of per label
    return float(_f1(tp, fp, fn).mean()) if tp.size else 0.0


def tune_thresholds(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per label, the probability threshold in `grid` (default 0.05..0.95) that maximises that label's F1 on the
    given (validation) data; ties keep the threshold closest to 0.5."""
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid, dtype=np.float64)
    order = grid[np.argsort(np.abs(grid - 0.5), kind="stable")]  # argmax takes the first best: nearest to 0.5
    labels = np.asarray(labels, bool)
    scores = np.stack([_f1(*f1_counts(probs >= t, labels)) for t in order])  # [thresholds, C]
    return order[scores.argmax(axis=0)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Probabilities from multilabel logits (numerically safe for large |logits|)."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=np.float64)))


def compute(names: tuple[str, ...] | list[str], logits: np.ndarray, labels: np.ndarray,
            thresholds: np.ndarray | None = None) -> dict[str, float]:
    """The named metrics from model logits. Multilabel when `labels` is 2-D (multi-hot); `thresholds` (per label,
    on probabilities) replace 0.5."""
    out = {}
    if labels.ndim == 2:
        pred = logits > 0.0 if thresholds is None else sigmoid(logits) >= thresholds
    else:
        pred = logits.argmax(axis=1)
    for name in names:
        fn = METRICS.get(name)
        if fn is None:
            raise ValueError(f"unknown metric {name}")
        out[name] = fn(pred, labels)
    return out


METRICS = {"accuracy": accuracy, "micro_f1": micro_f1, "macro_f1": macro_f1, "weighted_f1": weighted_f1,
           "samples_f1": samples_f1}
