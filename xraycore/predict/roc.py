"""ROC analysis of one finding's scores: the area under the curve, the curve, and
an operating point.

Each finding of a multi-label model is scored as its own binary problem, as the
ChestX-ray8 paper (Wang et al. 2017) and CheXNet (Rajpurkar et al. 2017) report
them: one AUROC per finding and their mean.
"""

from __future__ import annotations

import numpy as np

__all__ = ["operating_point", "roc_auc", "roc_curve", "youden_threshold"]


def _check(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"y_true and scores must be (N,) each, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 and 1 only")
    return y.astype(bool), s


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve: the probability that a positive scores above a
    negative, ties counting half (the Mann-Whitney U statistic over its maximum).

    Parameters
    ----------
    y_true : (N,) array of 0/1
    scores : (N,) array of float

    Returns
    -------
    auc : float
        NaN when ``y_true`` holds one class only (scikit-learn's
        ``roc_auc_score`` raises there).
    """
    y, s = _check(y_true, scores)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), np.float64)
    sorted_scores = s[order]
    # Average ranks of tied scores (1-based).
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive rates at each distinct score taken as threshold
    (``score >= threshold`` is positive), from (0, 0) to (1, 1).

    Returns
    -------
    fpr, tpr, thresholds : (M,) ndarrays
        ``thresholds`` descending, the first ``inf`` (nothing positive).
    """
    y, s = _check(y_true, scores)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the end of each run of ties
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    fpr = np.r_[0.0, fps / n]
    tpr = np.r_[0.0, tps / p]
    return fpr, tpr, np.r_[np.inf, s[last]]


def youden_threshold(y_true, scores) -> float:
    """The threshold of the ROC point farthest above chance (Youden's J,
    sensitivity + specificity - 1, at its greatest), as a model contract reads
    it (``score > threshold`` is positive: halfway to the next lower score); 0.5
    without both classes."""
    y, s = _check(y_true, scores)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr[1:] - fpr[1:])) + 1
    lowest = best + 1 >= len(thresholds)
    below = np.nextafter(thresholds[best], -np.inf) if lowest else thresholds[best + 1]
    return float(np.clip((thresholds[best] + below) / 2 if not lowest else below, 0.0, 1.0))


def operating_point(y_true, scores, threshold: float) -> dict[str, float | int]:
    """Sensitivity and specificity when ``score > threshold`` is positive (a
    model contract's rule), and the support (positives, negatives)."""
    y, s = _check(y_true, scores)
    called = s > threshold
    positives, negatives = int(y.sum()), int((~y).sum())
    return {
        "sensitivity": float((called & y).sum() / positives) if positives else float("nan"),
        "specificity": float((~called & ~y).sum() / negatives) if negatives else float("nan"),
        "positives": positives,
        "negatives": negatives,
    }
