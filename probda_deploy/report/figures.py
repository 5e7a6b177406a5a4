"""Matplotlib plumbing shared by the report figures: Agg canvas, fixed pixel sizes, atomic PNG writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_path

DPI = 80


def new_figure(size_px: tuple[int, int], *, layout: str | None = "constrained"):
    """A matplotlib Figure of exactly (width, height) pixels on an Agg canvas (no pyplot, no display).

    Args:
        layout: matplotlib layout engine; None for hand-placed axes (much faster for image grids).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Write the figure as PNG via a temp file + rename; the pixel size is the figure's."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return Path(path)


def display_range(image: np.ndarray) -> np.ndarray:
    """(H, W) image scaled to [0, 1] between its 1st and 99.5th percentiles."""
    image = np.asarray(image, np.float32)
    lo, hi = np.percentile(image, [1, 99.5])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max()) + 1e-6
    return np.clip((image - lo) / (hi - lo), 0, 1)
