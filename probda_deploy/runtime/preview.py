"""PNG previews of segmentations: the image in gray, the mask outline in red, low-consensus pixels in yellow.

numpy + imageio + scipy only, so previews work where torch is absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

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
    """Write the overlay PNG atomically. 3D inputs preview their middle slice."""
    import imageio.v3 as iio

    if image.ndim == 3:
        z = image.shape[0] // 2
        image, mask = image[z], mask[z]
        consensus = None if consensus is None else consensus[z]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        iio.imwrite(tmp, overlay(image, mask, consensus), extension=".png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_previews(report, out_dir: str | Path) -> list[Path]:
    """One `OUT_DIR/preview/NAME.png` per segmented TIFF output of a SegmentReport.

    Inputs are re-read from disk; files without a mask output (or OME-Zarr
    outputs) get no preview.
    """
    import tifffile

    from ..data.io import read_image

    written = []
    for r in report.results:
        mask = next((p for p in r.outputs if str(p).endswith("_mask.tif")), None)
        if r.status not in ("done", "skipped") or mask is None or not Path(mask).exists():
            continue
        cons_path = next((p for p in r.outputs if str(p).endswith("_consensus.tif")), None)
        consensus = tifffile.imread(cons_path) if cons_path and Path(cons_path).exists() else None
        name = Path(mask).name[: -len("_mask.tif")]
        written.append(write_preview(Path(out_dir) / "preview" / f"{name}.png", read_image(r.path), tifffile.imread(mask), consensus))
    return written
