"""Segmentation metrics on numpy arrays (no torch): per-image scores and pixel calibration histograms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def dice_hard(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """2|G∩S| / (|G| + |S|) of the thresholded prediction; 1.0 when both are empty."""
    s, g = prob >= threshold, target > 0.5
    den = s.sum() + g.sum()
    return 1.0 if den == 0 else float(2 * (s & g).sum() / den)


def dice_soft(prob: np.ndarray, target: np.ndarray) -> float:
    """2 sum(g p) / (sum g + sum p) on probabilities; 1.0 when both are empty."""
    g = (target > 0.5).astype(np.float64)
    p = prob.astype(np.float64)
    den = g.sum() + p.sum()
    return 1.0 if den == 0 else float(2 * (g * p).sum() / den)


def iou(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> float:
    """|G∩S| / |G∪S| of the thresholded prediction; 1.0 when both are empty."""
    s, g = prob >= threshold, target > 0.5
    union = (s | g).sum()
    return 1.0 if union == 0 else float((s & g).sum() / union)


def image_metrics(prob: np.ndarray, target: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    return {
        "dice_hard": dice_hard(prob, target, threshold),
        "dice_soft": dice_soft(prob, target),
        "iou": iou(prob, target, threshold),
        "foreground_pred": float((prob >= threshold).mean()),
        "foreground_true": float((target > 0.5).mean()),
    }


N_BINS = 10


def _zeros() -> np.ndarray:
    return np.zeros(N_BINS, np.float64)


@dataclass
class CalibrationBins:
    """Pixel counts per bin, updated image by image.

    Attributes:
        cons_count, cons_errors: pixels and misclassified pixels per consensus bin [i/N, (i+1)/N).
        prob_count, prob_sum, prob_pos: pixels, sum of mean probability, foreground pixels per
            probability bin.
    """

    cons_count: np.ndarray = field(default_factory=_zeros)
    cons_errors: np.ndarray = field(default_factory=_zeros)
    prob_count: np.ndarray = field(default_factory=_zeros)
    prob_sum: np.ndarray = field(default_factory=_zeros)
    prob_pos: np.ndarray = field(default_factory=_zeros)

    def update(self, prob: np.ndarray, consensus: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> None:
        """Add one image.

        Args:
            prob, consensus: (...) float32 mean probability and consensus in [0, 1].
            label: (...) binary mask (> 0.5 is foreground).
            threshold: of the hard prediction.
        """
        p, c = np.asarray(prob, np.float64).ravel(), np.asarray(consensus, np.float64).ravel()
        g = np.asarray(label).ravel() > 0.5
        wrong = (p >= threshold) != g
        ci, pi = _bin(c), _bin(p)
        self.cons_count += np.bincount(ci, minlength=N_BINS)
        self.cons_errors += np.bincount(ci, weights=wrong, minlength=N_BINS)
        self.prob_count += np.bincount(pi, minlength=N_BINS)
        self.prob_sum += np.bincount(pi, weights=p, minlength=N_BINS)
        self.prob_pos += np.bincount(pi, weights=g, minlength=N_BINS)

    @property
    def error_rate(self) -> np.ndarray:
        """(N_BINS,) fraction of wrong pixels per consensus bin (NaN where empty)."""
        return _ratio(self.cons_errors, self.cons_count)

    @property
    def reliability(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean predicted probability, observed foreground fraction) per probability bin (NaN where empty)."""
        return _ratio(self.prob_sum, self.prob_count), _ratio(self.prob_pos, self.prob_count)

    @property
    def ece(self) -> float:
        """Expected calibration error: pixel-weighted mean |observed - predicted| over probability bins."""
        total = self.prob_count.sum()
        if total == 0:
            return float("nan")
        conf, freq = self.reliability
        ok = self.prob_count > 0
        return float((self.prob_count[ok] * np.abs(freq[ok] - conf[ok])).sum() / total)

    def to_dict(self) -> dict:
        """JSON-ready: bin edges, error rate per consensus bin, reliability curve, ECE (None for empty bins)."""
        conf, freq = self.reliability
        return {
            "bin_edges": [round(float(x), 4) for x in np.linspace(0, 1, N_BINS + 1)],
            "consensus_pixels": [int(x) for x in self.cons_count],
            "error_rate_per_consensus_bin": _clean(self.error_rate),
            "probability_pixels": [int(x) for x in self.prob_count],
            "mean_probability_per_bin": _clean(conf),
            "foreground_fraction_per_bin": _clean(freq),
            "ece": None if np.isnan(self.ece) else self.ece,
        }


def _bin(values: np.ndarray) -> np.ndarray:
    return np.clip((values * N_BINS).astype(np.int64), 0, N_BINS - 1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _clean(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


IOU_THRESHOLDS = tuple(np.round(np.arange(0.5, 1.0, 0.05), 2))


def _iou_matrix(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(n_true, n_pred) IoU of every pair of objects (ids relabelled 1..n in order of appearance)."""
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    t, p = t.ravel(), p.ravel()
    has_bg_t, has_bg_p = (true == 0).any(), (pred == 0).any()
    n_t, n_p = int(t.max()) + 1, int(p.max()) + 1
    overlap = np.bincount(t.astype(np.int64) * n_p + p, minlength=n_t * n_p).reshape(n_t, n_p).astype(np.float64)
    area_t, area_p = overlap.sum(1), overlap.sum(0)
    union = area_t[:, None] + area_p[None, :] - overlap
    iou_ = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
    return iou_[int(has_bg_t):, int(has_bg_p):]


def object_metrics(pred: np.ndarray, true: np.ndarray, thresholds=IOU_THRESHOLDS) -> dict[str, float]:
    """Object precision, recall and F1 at IoU 0.5, F1 averaged over IoU 0.5-0.95, mean matched IoU and panoptic quality.

    Objects are matched one-to-one by maximal total IoU (scipy's linear_sum_assignment); a pair is a
    true positive at threshold t if its IoU >= t. F1 = 2 TP / (2 TP + FP + FN); panoptic quality =
    sum of matched IoUs / (TP + FP / 2 + FN / 2), at IoU 0.5. Both empty: every score is 1.

    Args:
        pred, true: (H, W) integer instance images, 0 = background.
    """
    from scipy.optimize import linear_sum_assignment

    iou_ = _iou_matrix(pred, true)
    n_t, n_p = iou_.shape
    if n_t == 0 and n_p == 0:
        return {"object_precision_50": 1.0, "object_recall_50": 1.0, "object_f1_50": 1.0, "object_f1_50_95": 1.0,
                "mean_matched_iou": 1.0, "panoptic_quality": 1.0, "objects_true": 0, "objects_pred": 0}
    rows, cols = linear_sum_assignment(-iou_) if n_t and n_p else (np.array([], int), np.array([], int))
    matched = iou_[rows, cols]

    def counts(t: float) -> tuple[int, int, int]:
        tp = int((matched >= t).sum())
        return tp, n_p - tp, n_t - tp

    f1s = []
    for t in thresholds:
        tp, fp, fn = counts(t)
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    tp, fp, fn = counts(0.5)
    good = matched[matched >= 0.5]
    return {
        "object_precision_50": tp / max(tp + fp, 1), "object_recall_50": tp / max(tp + fn, 1),
        "object_f1_50": 2 * tp / max(2 * tp + fp + fn, 1), "object_f1_50_95": float(np.mean(f1s)),
        "mean_matched_iou": float(good.mean()) if good.size else 0.0,
        "panoptic_quality": float(good.sum() / max(tp + fp / 2 + fn / 2, 1e-12)),
        "objects_true": n_t, "objects_pred": n_p,
    }
