"""Standardisation: (x - mean) / (std + eps), per image or per patch."""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def standardize(x: np.ndarray, *, mean: float | None = None, std: float | None = None, eps: float = EPS) -> np.ndarray:
    """Zero mean, unit variance float32; statistics of `x` unless given."""
    x = np.asarray(x, dtype=np.float32)
    m = float(x.mean(dtype=np.float64)) if mean is None else mean
    s = float(x.std(dtype=np.float64)) if std is None else std
    return ((x - m) / (s + eps)).astype(np.float32)


def standardize_batch(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Per-sample standardisation of (B, ...) arrays."""
    axes = tuple(range(1, x.ndim))
    m = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    s = x.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((x - m) / (s + eps)).astype(np.float32)
