"""Held-out evaluation: tagger macro mAP and micro-F1; deepix accuracy and log-loss per head."""

from __future__ import annotations

import numpy as np


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """AP of one tag: mean precision at the rank of each positive (ties broken by order, like sklearn's
    step-wise definition without interpolation)."""
    order = np.argsort(-scores, kind="stable")
    hits = labels[order].astype(bool)
    if not hits.any():
        return float("nan")
    precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision_at[hits].mean())


def tagger_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """labels, scores: [images, tags]. Macro mAP over the tags with a positive in the held-out set."""
    aps = [average_precision(labels[:, j], scores[:, j]) for j in range(labels.shape[1]) if labels[:, j].any()]
    predicted = scores >= threshold
    tp = float(np.logical_and(predicted, labels).sum())
    fp = float(np.logical_and(predicted, ~labels.astype(bool)).sum())
    fn = float(np.logical_and(~predicted, labels.astype(bool)).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "macro_map": float(np.mean(aps)) if aps else float("nan"),
        "tags_evaluated": len(aps),
        "micro_f1": f1,
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
