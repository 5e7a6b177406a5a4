"""Cover image of a zoo package: the test image with the predicted mask and its uncertainty."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _display(image: np.ndarray) -> np.ndarray:
    """Contrast-stretch (1st-99th percentile) to [0, 1] for display."""
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)


def render_cover(image: np.ndarray, prob: np.ndarray, std: np.ndarray, path: str | Path, *, threshold: float = 0.5) -> Path:
    """Write a 2:1 PNG: left the image with the mask outline, right the std map over the image.

    Args:
        image: (H, W) raw test image.
        prob: (H, W) mean foreground probability.
        std: (H, W) per-pixel std of the samples.
        path: output .png.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    gray = _display(np.asarray(image, np.float32))
    mask = np.asarray(prob) >= threshold
    fig = Figure(figsize=(8, 4), dpi=80)
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.92, bottom=0.01, wspace=0.02)
    for ax in axes:
        ax.imshow(gray, cmap="gray", interpolation="nearest")
        ax.set_axis_off()
    fill = np.zeros((*mask.shape, 4), np.float32)
    fill[mask] = (0.0, 0.9, 0.3, 0.35)
    axes[0].imshow(fill, interpolation="nearest")
    if mask.any() and not mask.all():
        axes[0].contour(mask.astype(np.float32), levels=[0.5], colors=["#00e64d"], linewidths=0.8)
    axes[0].set_title("mask (mean probability >= 0.5)", fontsize=10)
    vmax = max(float(np.max(std)), 1e-6)
    axes[1].imshow(np.asarray(std), cmap="magma", alpha=0.7, vmin=0.0, vmax=vmax, interpolation="nearest")
    axes[1].set_title(f"uncertainty (sample std, max {vmax:.2f})", fontsize=10)
    fig.savefig(path, format="png")
    return path
