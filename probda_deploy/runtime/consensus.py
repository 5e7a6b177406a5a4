"""Reductions over K sample probabilities (docs/method.md, "Pseudo-labels and consensus"), numpy only.

The decoder graph computes the same maps inside onnxruntime; these functions
serve the single-graph UNet exports, tests and tools that hold sample maps.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

RULES = ("agree", "confident")


def consensus(probs: np.ndarray, *, rule: str = "agree", high: float = 0.9, low: float = 0.1, mean: np.ndarray | None = None) -> np.ndarray:
    """Fraction of samples that are confident (and, for "agree", agree with the mean's class).

    Args:
        probs: (K, ...) sample probabilities in [0, 1].
        rule: "agree": s >= high where mean >= 0.5 else s <= low;
            "confident": s >= high or s <= low (reference code).
        high, low: confidence thresholds.
        mean: (...) mean over K, computed if None.

    Returns:
        (...) float32 in [0, 1], multiples of 1/K.
    """
    if rule not in RULES:
        raise ConfigError(f"consensus rule {rule!r}: unknown; choose {' or '.join(RULES)}")
    probs = np.asarray(probs, dtype=np.float32)
    hi, lo = probs >= high, probs <= low
    if rule == "confident":
        hits = hi | lo
    else:
        m = probs.mean(axis=0) if mean is None else mean
        hits = np.where(m[None] >= 0.5, hi, lo)
    return hits.mean(axis=0, dtype=np.float32)


def reduce_samples(probs: np.ndarray, *, rule: str = "agree", high: float = 0.9, low: float = 0.1) -> dict[str, np.ndarray]:
    """Mean probability, consensus and population std (ddof=0) over axis 0.

    Args:
        probs: (K, ...) float32 sample probabilities.

    Returns:
        {"prob", "consensus", "std"}: (...) float32 each.
    """
    probs = np.asarray(probs, dtype=np.float32)
    mean = probs.mean(axis=0)
    std = np.sqrt(((probs - mean[None]) ** 2).mean(axis=0)).astype(np.float32)
    return {"prob": mean, "consensus": consensus(probs, rule=rule, high=high, low=low, mean=mean), "std": std}
