"""Segmentation metrics on numpy arrays (no torch)."""

from __future__ import annotations

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
