"""Multi-label tagging metrics: per-tag average precision (macro mAP) and micro-F1 at a threshold."""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean precision at each positive (ties: stable by index)."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def macro_map(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean AP over the tags (columns) with at least one positive."""
    aps = [average_precision(scores[:, j], labels[:, j]) for j in range(labels.shape[1]) if labels[:, j].any()]
    return float(np.mean(aps)) if aps else float("nan")


def micro_f1(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    predicted = scores >= threshold
    truth = labels.astype(bool)
    tp = float(np.sum(predicted & truth))
    denominator = float(predicted.sum() + truth.sum())
    return 2 * tp / denominator if denominator else float("nan")
