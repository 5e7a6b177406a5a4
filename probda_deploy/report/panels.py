"""Per-image picture panels: raw image, prediction overlay, error map, consensus map, std map.

One row per model (the second row shows the `--compare` model on the same image).
Figures have a fixed pixel size (`panel_size`), drawn on matplotlib's Agg canvas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import display_range, new_figure, save_png

COLUMNS = ("image", "prediction overlay", "error vs labels", "consensus", "std over samples")
COL_PX, ROW_PX = 220, 250
ERROR_COLORS = {"true positive": (0.85, 0.85, 0.85), "false positive": (0.90, 0.15, 0.15),
                "false negative": (0.15, 0.35, 0.95), "true negative": (0.0, 0.0, 0.0)}


def panel_size(n_rows: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a panel with `n_rows` model rows."""
    return COL_PX * len(COLUMNS), ROW_PX * n_rows


def overlay_rgb(image: np.ndarray, mask: np.ndarray, *, color=(1.0, 0.55, 0.0), alpha: float = 0.45) -> np.ndarray:
    """(H, W, 3) float in [0, 1]: gray image with the mask tinted in `color`."""
    gray = display_range(image)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    m = np.asarray(mask, bool)[..., None]
    return np.where(m, (1 - alpha) * rgb + alpha * np.asarray(color), rgb)


def error_rgb(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W, 3) float: TP light gray, FP red, FN blue, TN black."""
    s, g = np.asarray(pred, bool), np.asarray(label) > 0.5
    out = np.zeros((*s.shape, 3), np.float32)
    for key, where in (("true positive", s & g), ("false positive", s & ~g), ("false negative", ~s & g)):
        out[where] = ERROR_COLORS[key]
    return out


def render_panel(maps, path: str | Path, *, title: str = "", threshold: float = 0.5,
                 row_names: tuple[str, ...] = ("model",), compare=None) -> Path:
    """Draw one image's panel to PNG.

    Args:
        maps: an ImageMaps (image, prob, consensus, std, label) of the model.
        compare: ImageMaps of a second model on the same image (adds a row), or None.
        row_names: label of each row (model names).

    Returns:
        The PNG path; its size is `panel_size(1 or 2)`.
    """
    rows = [maps] if compare is None else [maps, compare]
    fig = new_figure(panel_size(len(rows)), layout=None)
    top = 1 - 48 / (ROW_PX * len(rows))
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.05, top=top, wspace=0.12, hspace=0.3)
    axes = np.atleast_2d(fig.subplots(len(rows), len(COLUMNS)))
    for r, m in enumerate(rows):
        _draw_row(fig, axes[r], m, threshold, row_names[r] if r < len(row_names) else f"model {r + 1}")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 4 / (ROW_PX * len(rows)), va="top")
    return save_png(fig, path)


def _draw_row(fig, axes, m, threshold: float, name: str) -> None:
    pred = m.prob >= threshold
    axes[0].imshow(display_range(m.image), cmap="gray", interpolation="nearest")
    axes[1].imshow(overlay_rgb(m.image, pred), interpolation="nearest")
    if m.label is not None:
        axes[1].contour(m.label > 0.5, levels=[0.5], colors="cyan", linewidths=0.6)
        axes[2].imshow(error_rgb(pred, m.label), interpolation="nearest")
        wrong = float((pred != (m.label > 0.5)).mean())
        axes[2].set_title(f"error vs labels ({100 * wrong:.1f}% wrong)", fontsize=8)
    else:
        axes[2].text(0.5, 0.5, "no labels", ha="center", va="center", transform=axes[2].transAxes)
        axes[2].set_title("error vs labels", fontsize=8)
    im_c = axes[3].imshow(m.consensus, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    im_s = axes[4].imshow(m.std, cmap="magma", vmin=0, vmax=max(0.05, float(m.std.max())), interpolation="nearest")
    fig.colorbar(im_c, ax=axes[3], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    fig.colorbar(im_s, ax=axes[4], fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
    for col, ax in enumerate(axes):
        if col != 2:
            ax.set_title(COLUMNS[col], fontsize=8)
        ax.set_axis_off()
    axes[0].text(-0.06, 0.5, name, rotation=90, ha="center", va="center", fontsize=9, transform=axes[0].transAxes)
    note = "orange: prediction, cyan: label outline" if m.label is not None else "orange: prediction"
    axes[1].text(0.5, -0.04, note, ha="center", va="top", fontsize=7, transform=axes[1].transAxes)
    if m.label is not None:
        axes[2].text(0.5, -0.04, "gray TP, red FP, blue FN", ha="center", va="top", fontsize=7, transform=axes[2].transAxes)
