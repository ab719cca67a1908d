"""Classification metrics for P(wildfire) scores: plain numpy/scikit-learn, JSON-ready dicts.

Every function takes binary labels (1 = wildfire) and probabilities of class 1. Values that are undefined
for the data at hand (ROC-AUC on a one-class set, precision with no positive decision) are `None`, never
NaN, so the dicts serialize to strict JSON and a reader cannot mistake "undefined" for a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from pyrocast.errors import InvalidInputError

ECE_BINS = 10


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise InvalidInputError(f"{y.size} labels but {p.size} probabilities", "score every labelled tile once")
    if y.size == 0:
        raise InvalidInputError("no tiles to evaluate (0 labels)", "check that the folder holds tiles")
    if not np.all(np.isin(y, (0, 1))):
        raise InvalidInputError("labels must be 0 (nowildfire) or 1 (wildfire)")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise InvalidInputError("probabilities must be finite and within [0, 1]")
    return y.astype(np.int64), p


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den else None


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Counts of true/false positives/negatives when P(wildfire) >= threshold means wildfire."""
    y, p = _check(labels, probs)
    pred = (p >= threshold).astype(np.int64)
    return {
        "tn": int(np.sum((y == 0) & (pred == 0))),
        "fp": int(np.sum((y == 0) & (pred == 1))),
        "fn": int(np.sum((y == 1) & (pred == 0))),
        "tp": int(np.sum((y == 1) & (pred == 1))),
    }


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width bins of P(wildfire): per bin its range, count, mean probability and wildfire rate.

    Empty bins are kept (count 0, means None) so plots show where the model never puts its scores.
    """
    y, p = _check(labels, probs)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds [i/n, (i+1)/n); the last bin also holds p == 1. floor(p * n) rather than digitize on
    # linspace edges, whose rounding (0.30000000000000004) would put p = 0.3 into the bin below.
    idx = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        m = idx == b
        k = int(m.sum())
        out.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "count": k,
                "mean_prob": float(p[m].mean()) if k else None,
                "frac_wildfire": float(y[m].mean()) if k else None,
            }
        )
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of P(wildfire): sum over equal-width bins of (bin share) * |mean probability - wildfire rate|."""
    y, _ = _check(labels, probs)
    n = y.size
    return float(
        sum(
            b["count"] / n * abs(b["mean_prob"] - b["frac_wildfire"])
            for b in reliability_bins(labels, probs, n_bins)
            if b["count"]
        )
    )


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at small n and near 0 or 1, unlike the normal one)."""
    if n <= 0:
        return (0.0, 1.0)
    phat = successes / n
    den = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / den
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall, F1, ROC-AUC, ECE (10 bins), Brier score, n and the confusion matrix.

    `accuracy_ci95` is the Wilson interval of the accuracy: with the few hundred tiles of a small test
    split, a point estimate alone overstates what is known.
    """
    from sklearn.metrics import roc_auc_score

    y, p = _check(labels, probs)
    cm = confusion(y, p, threshold)
    tp, fp, fn, tn = cm["tp"], cm["fp"], cm["fn"], cm["tn"]
    n = int(y.size)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    two_classes = 0 < int(y.sum()) < n
    correct = tp + tn
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "n_wildfire": int(y.sum()),
        "threshold": float(threshold),
        "accuracy": correct / n,
        "accuracy_ci95": [lo, hi],
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": f1,
        "roc_auc": float(roc_auc_score(y, p)) if two_classes else None,
        "ece": expected_calibration_error(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "confusion": cm,
    }


def slice_metrics(
    labels: np.ndarray, probs: np.ndarray, groups: Sequence[str], threshold: float = 0.5
) -> dict[str, dict[str, Any]]:
    """classification_metrics per group value (e.g. latitude band), each with its own n, sorted by name."""
    y, p = _check(labels, probs)
    g = np.asarray(list(groups), dtype=object)
    if g.size != y.size:
        raise InvalidInputError(f"{g.size} group names for {y.size} tiles")
    return {str(k): classification_metrics(y[g == k], p[g == k], threshold) for k in sorted(set(g.tolist()))}
