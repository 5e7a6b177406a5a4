"""Exact tiling: windows with a halo on a grid aligned to the network's size multiple.

Tiles are cropped, not blended: windows whose origins are multiples of 2**(depth-1), with a
halo of at least the receptive-field radius, reproduce the whole-image result to float
precision, which blended overlaps do not (docs/experiments.md).

Geometry: the image (H, W) is virtually padded at the bottom/right to
(Hp, Wp), multiples of `multiple`, exactly as the untiled path pads it
(reflect, replicate when the image is too small; see models/blocks.pad_to_multiple).
The cores partition [0, Hp) x [0, Wp); each window is its core grown by the
halo and clipped to the padded image, so every window edge is either an image
edge (where the whole-image network also sees its zero padding) or at least a
halo away from the core. All bounds are multiples of `multiple`, so pooling
grids line up with the whole-image run. Inputs only need numpy-style slicing
(numpy arrays, memory maps, zarr arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: `core` is the output region, `window` the input region (padded coordinates).

    Attributes:
        core: (y0, y1, x0, x1) of the output region.
        window: (y0, y1, x0, x1) of the network input, core + halo, clipped.
    """

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    def core_in_window(self, scale: int = 1) -> tuple[slice, slice]:
        """Slices of the core inside the window's output at 1/scale resolution."""
        (y0, y1, x0, x1), (wy, _, wx, _) = self.core, self.window
        return slice((y0 - wy) // scale, (y1 - wy) // scale), slice((x0 - wx) // scale, (x1 - wx) // scale)

    def clipped_core(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """Slices of the core inside the window, clipped to an (H, W) image (the padding cut off)."""
        (y0, y1, x0, x1), (wy, _, wx, _) = self.core, self.window
        return slice(y0 - wy, min(y1, shape[0]) - wy), slice(x0 - wx, min(x1, shape[1]) - wx)


def round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def padded_shape(shape: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`."""
    return round_up(shape[0], multiple), round_up(shape[1], multiple)


def pad_mode(shape: tuple[int, int], multiple: int) -> str:
    """"reflect" when both pads are smaller than the sides, else "edge" (as pad_to_multiple)."""
    h, w = shape
    ph, pw = (-h) % multiple, (-w) % multiple
    return "reflect" if ph < h and pw < w else "edge"


def plan_tiles(shape: tuple[int, int], *, multiple: int, tile: int | None, halo: int) -> list[Tile]:
    """Tiles covering an image of `shape`.

    Args:
        shape: (H, W) of the original image.
        multiple: the network's size multiple 2**(depth-1).
        tile: core size in pixels (rounded up to `multiple`); None or >= the
            padded size: one window, the whole image.
        halo: context on each side (rounded up to `multiple`).

    Returns:
        Tiles in row-major order.
    """
    hp, wp = padded_shape(shape, multiple)
    if tile is None or tile <= 0:
        return [Tile((0, hp, 0, wp), (0, hp, 0, wp))]
    t = max(round_up(tile, multiple), multiple)
    cores = [(y0, min(y0 + t, hp), x0, min(x0 + t, wp)) for y0 in range(0, hp, t) for x0 in range(0, wp, t)]
    return with_halo([Tile(c, c) for c in cores], shape, multiple=multiple, halo=halo)


def with_halo(tiles: list[Tile], shape: tuple[int, int], *, multiple: int, halo: int) -> list[Tile]:
    """The same cores with windows grown by `halo` (rounded up to `multiple`) and clipped to the padded image."""
    hp, wp = padded_shape(shape, multiple)
    h = round_up(max(halo, 0), multiple)
    return [Tile(t.core, (max(0, t.core[0] - h), min(hp, t.core[1] + h), max(0, t.core[2] - h), min(wp, t.core[3] + h)))
            for t in tiles]


def _index(start: int, stop: int, size: int, mode: str) -> np.ndarray:
    idx = np.arange(start, stop)
    if mode == "reflect":
        return np.where(idx < size, idx, 2 * (size - 1) - idx)
    return np.minimum(idx, size - 1)


def read_window(image, window: tuple[int, int, int, int], *, multiple: int) -> np.ndarray:
    """The window of the virtually padded image as float32 (h, w).

    Args:
        image: (H, W) array-like supporting slicing.
        window: (y0, y1, x0, x1) in padded coordinates.
        multiple: size multiple that defines the padding.
    """
    y0, y1, x0, x1 = window
    h, w = image.shape[-2:]
    if y1 <= h and x1 <= w:
        return np.asarray(image[y0:y1, x0:x1], dtype=np.float32)
    mode = pad_mode((h, w), multiple)
    ri, ci = _index(y0, y1, h, mode), _index(x0, x1, w, mode)
    r0, c0 = int(ri.min()), int(ci.min())
    block = np.asarray(image[r0 : int(ri.max()) + 1, c0 : int(ci.max()) + 1], dtype=np.float32)
    return block[np.ix_(ri - r0, ci - c0)]


def image_stats(image, *, rows: int = 1024) -> tuple[float, float]:
    """Mean and std (float64 accumulation) of a 2D array-like, read `rows` rows at a time.

    Returns:
        (mean, std) of all pixels, as Python floats.
    """
    return scan_stats(image, rows=rows)[:2]


def scan_stats(image, *, rows: int = 1024) -> tuple[float, float, float, float, int]:
    """One streamed pass over a 2D array-like: mean, std, min, max of the finite pixels and the NaN/inf count.

    Returns:
        (mean, std, min, max, nonfinite); min > max when no pixel is finite.
    """
    total, total_sq, n, nonfinite = 0.0, 0.0, 0, 0
    lo, hi = np.inf, -np.inf
    h = image.shape[0]
    first = np.asarray(image[: min(h, rows)], dtype=np.float64)
    finite_first = first[np.isfinite(first)]
    mean_guess = float(finite_first.mean()) if finite_first.size else 0.0
    for r in range(0, h, rows):
        raw = first if r == 0 else np.asarray(image[r : r + rows], dtype=np.float64)
        finite = np.isfinite(raw)
        bad = raw.size - int(np.count_nonzero(finite))
        if bad:
            nonfinite += bad
            raw = raw[finite]
        if raw.size:
            lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
        block = raw - mean_guess
        total += float(block.sum())
        total_sq += float((block * block).sum())
        n += block.size
    mean = total / max(n, 1)
    var = max(total_sq / max(n, 1) - mean * mean, 0.0)
    return mean + mean_guess, var**0.5, lo, hi, nonfinite
