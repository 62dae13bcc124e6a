"""Held-out evaluation, one copy for the trainer (`acg2vec train`), the default image models and
benchmarks/image_tagger.py: the 0/1 tag matrix, tagger macro mAP and micro-F1, deepix accuracy and log-loss per head.

Argument order everywhere: the truth (labels, bins) first, then the model's scores, as sklearn's (y_true, y_score).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np


class Tagged(Protocol):
    @property
    def tags(self) -> Iterable[str]: ...


def multi_hot(items: Sequence[Tagged], vocabulary: Sequence[str]) -> np.ndarray:
    """[items, tags] float32: 1 where an item carries the tag; tags outside the vocabulary are left out."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(items), len(vocabulary)), dtype=np.float32)
    for row, item in enumerate(items):
        for tag in item.tags:
            if tag in index:
                out[row, index[tag]] = 1.0
    return out


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of one tag: mean precision at the rank of each positive (ties broken by order, like sklearn's
    step-wise definition without interpolation); NaN without a positive."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def tag_aps(labels: np.ndarray, scores: np.ndarray) -> list[float]:
    """labels, scores: [images, tags]. AP of each tag (column) with at least one positive."""
    return [average_precision(labels[:, j], scores[:, j]) for j in range(labels.shape[1]) if labels[:, j].any()]


def macro_map(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over the tags with at least one positive."""
    aps = tag_aps(labels, scores)
    return float(np.mean(aps)) if aps else float("nan")


def _counts(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(true positives, false positives, false negatives) of `scores >= threshold` over every cell."""
    predicted, truth = scores >= threshold, labels.astype(bool)
    return (
        float(np.logical_and(predicted, truth).sum()),
        float(np.logical_and(predicted, ~truth).sum()),
        float(np.logical_and(~predicted, truth).sum()),
    )


def micro_f1(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """F1 over every (image, tag) cell at the threshold; 0 when nothing is predicted and nothing is true."""
    tp, fp, fn = _counts(labels, scores, threshold)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def tagger_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """labels, scores: [images, tags]. Macro mAP over the tags with a positive in the held-out set."""
    aps = tag_aps(labels, scores)
    tp, fp, fn = _counts(labels, scores, threshold)
    return {
        "macro_map": float(np.mean(aps)) if aps else float("nan"),
        "tags_evaluated": len(aps),
        "micro_f1": micro_f1(labels, scores, threshold),
        "micro_precision": tp / (tp + fp) if tp + fp else 0.0,
        "micro_recall": tp / (tp + fn) if tp + fn else 0.0,
        "threshold": threshold,
        "images": int(labels.shape[0]),
    }


def classification_metrics(bins: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """bins: [n] true bin index; probabilities: [n, k]. Accuracy and mean log-loss (natural log)."""
    if len(bins) == 0:
        return {"examples": 0}
    picked = np.clip(probabilities[np.arange(len(bins)), bins], 1e-7, 1.0)
    return {
        "accuracy": float((probabilities.argmax(axis=1) == bins).mean()),
        "log_loss": float(-np.log(picked).mean()),
        "examples": len(bins),
    }
