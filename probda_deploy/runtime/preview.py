"""PNG previews of segmentations: the image in gray, the mask outline in red, low-consensus pixels in yellow.

numpy + imageio + scipy only, so previews work where torch is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..files import atomic_path

MAX_SIDE = 1024


def overlay(image: np.ndarray, mask: np.ndarray, consensus: np.ndarray | None = None) -> np.ndarray:
    """(H, W) image + mask (+ consensus) -> (H', W', 3) uint8 RGB, downscaled so the longest side <= 1024."""
    step = max(1, int(np.ceil(max(image.shape) / MAX_SIDE)))
    img, m = image[::step, ::step].astype(np.float64), mask[::step, ::step] > 0
    lo, hi = np.percentile(img, (1, 99.5))
    gray = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    fill = m[..., None] * np.array([60, 0, 0])
    rgb = np.clip(rgb.astype(np.int16) + fill, 0, 255).astype(np.uint8)
    if consensus is not None:
        unsure = consensus[::step, ::step] < 0.5
        rgb[unsure] = (0.5 * rgb[unsure] + 0.5 * np.array([255, 220, 0])).astype(np.uint8)
    edge = m & ~ndimage.binary_erosion(m)
    rgb[edge] = (255, 40, 40)
    return rgb


def write_preview(path: str | Path, image: np.ndarray, mask: np.ndarray, consensus: np.ndarray | None = None) -> Path:
    """Write the overlay PNG of a 2D image atomically (the batch layer passes the middle slice of stacks)."""
    import imageio.v3 as iio

    with atomic_path(path, suffix=".png") as tmp:
        iio.imwrite(tmp, overlay(np.asarray(image), mask, consensus), extension=".png")
    return Path(path)
