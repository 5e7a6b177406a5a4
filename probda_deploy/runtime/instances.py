"""Objects from the mean probability: seeded-watershed instances and a per-object uncertainty table.

Touching nuclei share one connected component of the mask; the distance
transform of the mask has one maximum per roundish object, so its h-maxima
seed a watershed that cuts the necks between them. Nuclei pressed together
leave a neck too shallow for a fixed h; seeds scaled to the objects' typical
radius find them, but also cut rings and fragments into arcs. So the scaled
seeds only split an object into pieces that are each at least `split` of the
median object's area (docs/experiments.md, "Instance seeds"). Objects larger
than 10 px in radius also get the h-maxima seeds scaled up with them, so the
same nuclei imaged at a higher magnification split alike.

Each connected component of the mask is seeded and flooded on its own, in
its bounding box grown by the smoothing's reach (`_watershed`): its seeds come
from its own pixels only, and ties between equal heights are broken by them
alone. Ids run in raster order of each object's first pixel. Any window that
holds a component whole, with that room around it (`cut_sides`), therefore
labels it exactly as the whole image does, which is what makes the blockwise
labelling of OME-Zarr outputs (zarr_instances.py) equal the whole-image one.
Numpy, scipy and scikit-image only (no torch).
"""

from __future__ import annotations

import csv
import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from ..files import atomic_path
from ..method import FLOAT_MAPS

# the finer seeds (`split`): sigma and h as fractions of the objects' typical inscribed radius
SIGMA_PER_RADIUS = 0.12
HEIGHT_PER_RADIUS = 0.04
TRUNCATE = 4.0  # the Gaussian kernel reaches int(TRUNCATE * sigma + 0.5) px (scipy's rule)
OBJECT_COLUMNS = ("id", "centroid_y", "centroid_x", "area", "mean_prob", "mean_consensus", "mean_std", "uncertain", "exact")


@dataclass(frozen=True)
class InstanceConfig:
    """Instance separation and object flagging.

    threshold: mask = mean probability >= threshold.
    seed_height: h of the h-maxima of the (smoothed) distance transform, in px: two maxima
        closer in height than this merge into one seed, so a larger value splits less.
    sigma: Gaussian smoothing of the distance transform (px) before seeding.
    reference_radius: seed_height and sigma are for objects of up to this typical radius (px);
        larger objects scale both by their typical radius / reference_radius (0 = never).
    min_size: objects smaller than this (px) are merged into a touching object or dropped.
    split: an object is split further by seeds scaled to the objects (sigma 0.12 r, h 0.04 r; r = the
        median inscribed radius of the mask's components) when each of its pieces has at least this
        fraction of the median object area; 0 = h-maxima seeds only.
    disagree: objects whose mean consensus is below this are flagged `uncertain`.
    block_halo: context (px) around each block when an OME-Zarr output is labelled block by block
        (zarr_instances.py); a block's window grows beyond it until the clumps touching the block are whole.
    max_window: the largest side (px) a block's window may grow to; objects of clumps larger than
        that are labelled from the largest window and flagged `exact` = 0.
    """

    threshold: float = 0.5
    seed_height: float = 1.0
    sigma: float = 1.0
    reference_radius: float = 10.0
    min_size: int = 15
    split: float = 0.6
    disagree: float = 0.5
    block_halo: int = 64
    max_window: int = 4096

    def check(self) -> None:
        """Raises ValueError naming the first value out of range (by its command-line option where it has one)."""
        if not 0 < self.threshold < 1:
            raise ValueError(f"--threshold {self.threshold}: must be between 0 and 1")
        if self.seed_height <= 0:
            raise ValueError(f"--seed-height {self.seed_height}: must be > 0 (smaller splits touching objects more)")
        if self.min_size < 0:
            raise ValueError(f"--min-size {self.min_size}: must be >= 0 px")
        if self.split < 0:
            raise ValueError(f"--split {self.split}: must be >= 0 (a fraction of the median object area; 0 = off)")
        if self.reference_radius < 0:
            raise ValueError(f"instance reference radius {self.reference_radius} must be >= 0 px (0 = seeds never scaled)")
        if self.sigma < 0 or self.block_halo < 1 or self.max_window < 1:
            raise ValueError(f"instance sigma {self.sigma} must be >= 0, block halo {self.block_halo} and max window "
                             f"{self.max_window} >= 1")


def instance_config(threshold: float = 0.5, seed_height: float = InstanceConfig.seed_height,
                    min_size: int = InstanceConfig.min_size, split: float = InstanceConfig.split) -> InstanceConfig:
    """The checked InstanceConfig of a user's options (`--threshold`, `--seed-height`, `--min-size`, `--split`).

    Raises:
        ConfigError: a value out of range, named by its option.
    """
    cfg = InstanceConfig(threshold=float(threshold), seed_height=float(seed_height), min_size=int(min_size), split=float(split))
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def separate_instances(prob: np.ndarray, cfg: InstanceConfig = InstanceConfig(),
                       boundary: np.ndarray | None = None, scale: tuple[float, float] | None = None) -> np.ndarray:
    """One id per object: (H, W) mean probability -> (H, W) uint16 labels (uint32 above 65535 objects), 0 = background.

    Ids run 1..n in raster order of each object's first pixel. With the boundary map of a boundary
    model, the distance transform is taken of the mask with the predicted boundaries (>= 0.5) cut out,
    so touching objects that the foreground fills between get one seed each; the watershed still
    floods the whole mask.

    Args:
        scale: (typical radius, median object area): the scale of the seeds and of `cfg.split`; None:
            measured on this image (`component_radii`, `object_areas`). Blocks of a larger image pass
            the whole plane's.
    """
    cfg.check()
    radius, area = scale if scale is not None else (None, None)
    return split_and_number(*seedings(prob, cfg, boundary, radius), cfg, area)


def seed_scales(cfg: InstanceConfig, radius: float) -> list[tuple[float, float]]:
    """(sigma, h) of the h-maxima seeding and, with `cfg.split`, of the finer seeding scaled to `radius`."""
    grow = max(1.0, radius / cfg.reference_radius) if cfg.reference_radius > 0 else 1.0
    scales = [(cfg.sigma * grow, cfg.seed_height * grow)]
    if cfg.split > 0 and radius > 0:
        scales.append((SIGMA_PER_RADIUS * radius, max(HEIGHT_PER_RADIUS * radius, 0.1)))
    return scales


def reach(sigma: float) -> int:
    """How far (px) the smoothing of the distance transform carries a mask pixel: scipy's kernel radius."""
    return int(TRUNCATE * sigma + 0.5) if sigma > 0 else 0


def seed_reach(cfg: InstanceConfig, radius: float) -> int:
    """How far (px) beyond a component of the mask its seeding looks: the largest `reach` of `seed_scales`."""
    return max(reach(sigma) for sigma, _ in seed_scales(cfg, radius))


def cut_sides(components: np.ndarray, ids: np.ndarray, window: tuple[int, int, int, int], shape: tuple[int, int],
              reach_px: int) -> np.ndarray:
    """(n, 4) bool: which sides (top, bottom, left, right) of a window of an image of `shape` cut each of the
    connected components `ids` of the mask (`ndimage.label` on the window); a component no side cuts is
    whole in the window with the room its seeding needs, and the window labels it as the whole image does.

    A window side that is not an image side cuts a component nearer than reach_px + 1 px (`seed_reach`):
    the component could go on beyond it, or its seeding's box (`seedings`) would not fit.
    """
    found = ndimage.find_objects(components)
    boxes = np.array([[found[i - 1][0].start, found[i - 1][0].stop, found[i - 1][1].start, found[i - 1][1].stop]
                      for i in ids], np.int64).reshape(-1, 4)
    (y0, y1, x0, x1), (h, w), m = window, components.shape, reach_px + 1
    return np.stack([(boxes[:, 0] < m) & (y0 > 0), (boxes[:, 1] > h - m) & (y1 < shape[0]),
                     (boxes[:, 2] < m) & (x0 > 0), (boxes[:, 3] > w - m) & (x1 < shape[1])], axis=1)


def seedings(prob: np.ndarray, cfg: InstanceConfig, boundary: np.ndarray | None = None,
             radius: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(mask, h-maxima objects, objects of the seeds scaled to `radius` or None without `cfg.split`).

    radius: the objects' typical radius (None: measured on this mask, when the settings need it).
    Each connected component of the mask is seeded from its own pixels alone, so any window that
    holds a component whole with room for its seeding (`cut_sides`) labels it as the whole image does.
    """
    mask = prob >= cfg.threshold
    if not mask.any():
        return mask, np.zeros(prob.shape, np.int32), None
    whole = ndimage.distance_transform_edt(mask) if boundary is None or radius is None else None
    dist = whole if boundary is None else ndimage.distance_transform_edt(mask & (boundary < 0.5))
    if radius is None:
        scaled = cfg.split > 0 or cfg.reference_radius > 0
        radius = typical(component_radii(mask, cfg.min_size, dist=whole)) if scaled else 0.0
    components, _ = ndimage.label(mask)
    boxes = ndimage.find_objects(components)
    out = [_watershed(components, boxes, dist, sigma, height, cfg.min_size) for sigma, height in seed_scales(cfg, radius)]
    return mask, out[0], out[1] if len(out) > 1 else None


def _watershed(components: np.ndarray, boxes: list, dist: np.ndarray, sigma: float, height: float,
               min_size: int) -> np.ndarray:
    """Objects of every component of the mask, each seeded and flooded on its own in its bounding box grown
    by the smoothing's reach + 1 px (clipped to the image), with only its own distance transform in it:
    its neighbours never shift its seeds or break its ties."""
    out = np.zeros(components.shape, np.int32)
    room, (h, w), nxt = reach(sigma) + 1, components.shape, 0
    for c, box in enumerate(boxes, start=1):
        if box is None:
            continue
        crop = (slice(max(box[0].start - room, 0), min(box[0].stop + room, h)),
                slice(max(box[1].start - room, 0), min(box[1].stop + room, w)))
        own = components[crop] == c
        labels = _seed_and_flood(np.where(own, dist[crop], 0.0), own, sigma, height, min_size)
        out[crop][own] = np.where(labels[own] > 0, labels[own] + nxt, 0)
        nxt += int(labels.max())
    return out


def _seed_and_flood(dist: np.ndarray, own: np.ndarray, sigma: float, height: float, min_size: int) -> np.ndarray:
    """The watershed of one component (`own`) from the h-maxima of its smoothed distance transform, or from
    its deepest point when it is too flat for one; pieces under `min_size` px join a neighbour or vanish."""
    if sigma > 0:
        dist = ndimage.gaussian_filter(dist, sigma, truncate=TRUNCATE)
    markers, n = ndimage.label(_h_maxima(dist, height) & own)
    if n == 0:
        markers[ndimage.maximum_position(dist, own)] = n = 1
    labels = _flood(dist, markers, own)
    if min_size > 0:
        small = np.flatnonzero(np.bincount(labels.ravel(), minlength=n + 1)[1:] < min_size) + 1
        if small.size:  # flood again without the small seeds: fragments join a neighbour, lone specks vanish
            markers[np.isin(markers, small)] = 0
            labels = _flood(dist, markers, own)
            labels[np.isin(labels, np.flatnonzero(np.bincount(labels.ravel()) < min_size))] = 0
    return labels


def _h_maxima(height_map: np.ndarray, h: float) -> np.ndarray:
    """The h-maxima of a non-negative map: where the map is 0, the reconstruction starts at 0 rather than
    at -h, as if a peak higher than h stood beyond (skimage's `h_maxima` on an image that holds one)."""
    from skimage.morphology import reconstruction

    land = height_map > 0
    jitter = 2 * np.finfo(height_map.dtype).resolution * np.abs(height_map)  # as skimage: rounding never makes a maximum
    marker = np.where(land, height_map - h - jitter, 0.0)
    return (height_map - reconstruction(marker, height_map, method="dilation")) >= h


def _flood(height_map: np.ndarray, markers: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Watershed of -height_map from `markers` in `own` (one marker: all of `own` is its)."""
    from skimage.segmentation import watershed

    ids = np.unique(markers[markers > 0])
    if len(ids) < 2:
        return own * (int(ids[0]) if len(ids) else 0)
    return watershed(-height_map, markers, mask=own)


def split_and_number(mask: np.ndarray | None, labels: np.ndarray, fine: np.ndarray | None, cfg: InstanceConfig,
                     area: float | None = None) -> np.ndarray:
    """The h-maxima objects of `seedings` split by its finer seeding (`split_objects`), numbered 1..n in
    raster order of their first pixels (`number_in_raster_order`).

    area: the median object area (None: measured on `mask` and `labels`).
    """
    if fine is not None:
        area = typical(object_areas(mask, labels, cfg.min_size)) if area is None else area
        if area > 0:
            labels = split_objects(labels, fine, cfg.split * area)
    return number_in_raster_order(labels)


def first_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids > 0 ascending, the flat index of each id's first pixel in raster order)."""
    flat = labels.ravel()
    at = np.flatnonzero(flat)
    ids, first = np.unique(flat[at], return_index=True)
    return ids, at[first]


def number_in_raster_order(labels: np.ndarray) -> np.ndarray:
    """Ids 1..n in raster order of each object's first pixel, uint16 (uint32 above 65535 objects): a
    numbering that any block holding the objects whole can reproduce."""
    ids, first = first_pixels(labels)
    lut = np.zeros(int(labels.max()) + 1, np.uint32)
    lut[ids[np.argsort(first)]] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lut[labels].astype(np.uint16 if len(ids) < 65535 else np.uint32)


def typical(values: np.ndarray) -> float:
    """The median of `component_radii` or `object_areas` (0 without any)."""
    return float(np.median(values)) if values.size else 0.0


def component_radii(mask: np.ndarray, min_size: int = 0, core: tuple[slice, slice] | None = None, *,
                    dist: np.ndarray | None = None) -> np.ndarray:
    """The largest inscribed radius (max of the distance transform, px) of each connected component of `mask`.

    Touching objects share a component but keep about one object's radius, so the median is the
    objects' typical radius. Components under `min_size` px do not count. With `core`, only those
    whose first pixel (raster order) lies in it: blocks of a larger image that see each component
    whole count it once. `dist`: the mask's distance transform, if already computed.
    """
    if dist is None:
        dist = ndimage.distance_transform_edt(mask)
    return _per_region(ndimage.label(mask)[0], min_size, core, dist)


def object_areas(mask: np.ndarray, labels: np.ndarray, min_size: int = 0, core: tuple[slice, slice] | None = None) -> np.ndarray:
    """The areas (px) of the objects of `labels` (at least `min_size`); `core` as in `component_radii`."""
    return _per_region(labels, min_size, core)


def _per_region(regions: np.ndarray, min_size: int, core: tuple[slice, slice] | None,
                dist: np.ndarray | None = None) -> np.ndarray:
    """Per region of at least `min_size` px (first pixel in `core`): its max of `dist`, or its area without `dist`."""
    ids, first = first_pixels(regions)
    sizes = np.bincount(regions.ravel())[ids]
    keep = sizes >= max(min_size, 1)
    if core is not None:
        for at, sl in zip(np.unravel_index(first, regions.shape), core):
            keep &= (at >= sl.start) & (at < sl.stop)
    values = sizes.astype(np.float64) if dist is None else np.asarray(ndimage.maximum(dist, regions, ids), np.float64)
    return values[keep]


def split_objects(coarse: np.ndarray, fine: np.ndarray, min_area: float) -> np.ndarray:
    """`coarse` objects replaced by their `fine` pieces where each piece has >= min_area px.

    Pieces under a tenth of the object are watershed-line jitter between the two seedings, not
    pieces; their pixels join the nearest piece.
    """
    inside = coarse > 0
    pairs, counts = np.unique(np.stack([coarse[inside], fine[inside]]).astype(np.int64), axis=1, return_counts=True)
    area = np.bincount(coarse.ravel())
    pieces = (pairs[1] > 0) & (counts >= 0.1 * area[pairs[0]])
    pairs, counts = pairs[:, pieces], counts[pieces]
    objs, n_pieces = np.unique(pairs[0], return_counts=True)
    out = coarse.astype(np.int64)
    nxt = int(coarse.max()) + 1
    boxes = ndimage.find_objects(coarse)
    for obj in objs[n_pieces >= 2]:
        mine = pairs[0] == obj
        if counts[mine].min() < min_area:
            continue
        sl = boxes[obj - 1]
        region = coarse[sl] == obj
        markers = np.zeros(region.shape, np.int64)
        for piece in pairs[1, mine]:
            markers[region & (fine[sl] == piece)] = nxt
            nxt += 1
        _, (iy, ix) = ndimage.distance_transform_edt(markers == 0, return_indices=True)
        out[sl][region] = markers[iy, ix][region]
    return out


def object_table(labels: np.ndarray, maps: dict[str, np.ndarray], *, disagree: float = 0.5) -> list[dict]:
    """One row per object: id, centroid (y, x), area (px), mean prob / consensus / std, uncertain flag, exact
    (always true for a whole image; see `zarr_instances.label_blocks` for blocks).

    Args:
        labels: (H, W) instance ids, 0 = background.
        maps: "prob", "consensus" and "std", each (H, W) float.
        disagree: `uncertain` = mean consensus < disagree (the samples disagree on the object).
    """
    return list(iter_rows(*object_sums(labels, maps), disagree=disagree))


def label_planes(prob: np.ndarray, cfg: InstanceConfig, boundary: np.ndarray | None = None) -> np.ndarray:
    """Seeded-watershed instances of each slice of (Z, H, W) prob (cut at the boundary map, if any); ids unique over the stack."""
    out, offset = [], 0
    for z, p in enumerate(prob):
        lab = separate_instances(p, cfg, None if boundary is None else boundary[z]).astype(np.uint32)
        out.append(np.where(lab > 0, lab + offset, 0))
        offset += int(lab.max())
    return np.stack(out).astype(np.uint16 if offset < 2**16 - 1 else np.uint32)


def plane_objects(instances: np.ndarray, maps: dict[str, np.ndarray], *, stack: bool) -> Iterator[dict]:
    """The object table of (Z, H, W) instances over (Z, H, W) maps, slice by slice (`object_table`); rows of
    stacks carry their slice `z`."""
    for z, labels in enumerate(instances):
        for row in object_table(labels, {k: maps[k][z] for k in FLOAT_MAPS}):
            yield {"z": z, **row} if stack else row


SUMS = ("area", "y", "x", *FLOAT_MAPS)  # the columns of `object_sums`


def object_sums(labels: np.ndarray, maps: dict[str, np.ndarray], *, origin: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Per-object sums of one image or block, to be added over blocks (`merge_sums`) and turned into rows.

    Args:
        labels: (h, w) instance ids, 0 = background.
        maps: "prob", "consensus" and "std", each (h, w) float.
        origin: (y0, x0) of the block in the image, added to the pixel coordinates.

    Returns:
        ids (n,) uint64 and sums (n, 6) float64 with columns SUMS (pixel count, sum of y, of x, of each map).
    """
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids.astype(np.uint64), np.zeros((0, len(SUMS)))
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    planes = [np.ones(labels.shape), yy + origin[0], xx + origin[1]] + [maps[k].astype(np.float64) for k in SUMS[3:]]
    return ids.astype(np.uint64), np.stack([ndimage.sum_labels(p, labels, ids) for p in planes], axis=1)


def merge_sums(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Add the `object_sums` of blocks per id: (ids sorted, sums)."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros((0, len(SUMS)))
    ids, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
    sums = np.zeros((len(ids), len(SUMS)))
    np.add.at(sums, inverse, np.concatenate([p[1] for p in parts]))
    return ids, sums


def iter_rows(ids: np.ndarray, sums: np.ndarray, *, disagree: float = 0.5, planes: np.ndarray | None = None,
              exact: np.ndarray | None = None) -> Iterator[dict]:
    """Rows of the object table (see `object_table`) from per-object sums, one at a time (a whole slide's table is
    written without holding a dict per object); `planes`: each object's slice `z` (stacks); `exact`: per object,
    whether it is the whole-image run's (default: all)."""
    for j, i in enumerate(ids):
        a = sums[j, 0]
        m = sums[j] / max(a, 1)
        row = {"id": int(i), "centroid_y": float(m[1]), "centroid_x": float(m[2]), "area": int(a),
               "mean_prob": float(m[3]), "mean_consensus": float(m[4]), "mean_std": float(m[5]),
               "uncertain": bool(m[4] < disagree), "exact": True if exact is None else bool(exact[j])}
        yield row if planes is None else {"z": int(planes[j]), **row}


LEAST_CERTAIN = 10  # objects a summary lists: per image, per batch (`probda segment`) and in reports


@dataclass(frozen=True)
class ObjectSummary:
    """What a report says of an image's objects: how many, how many flagged `uncertain`, the least certain rows,
    how many are not `exact` (blockwise outputs with clumps larger than the window)."""

    count: int
    uncertain: int
    least_certain: tuple[dict, ...]
    inexact: int = 0


def summarize_objects(rows: Iterable[dict], n: int = LEAST_CERTAIN) -> ObjectSummary:
    """Count the rows (a list or a stream) and keep the n least certain (`least_certain`), in one pass."""
    counts = [0, 0, 0]

    def counted():
        for r in rows:
            counts[0] += 1
            counts[1] += int(r["uncertain"])
            counts[2] += int(not r.get("exact", True))
            yield r

    least = least_certain(counted(), n)
    return ObjectSummary(counts[0], counts[1], tuple(least), counts[2])


def least_certain(rows: Iterable[dict], n: int = LEAST_CERTAIN) -> list[dict]:
    """The n objects with the lowest mean consensus (ties: larger std first)."""
    return heapq.nsmallest(n, rows, key=lambda r: (r["mean_consensus"], -r["mean_std"]))


def write_object_csv(path: str | Path, rows: Iterable[dict], *, stack: bool | None = None) -> Path:
    """Write the object table as CSV (columns OBJECT_COLUMNS, after `z` for stacks; floats with 4 decimals), atomically.

    Args:
        rows: rows (a list or a stream); `stack` says whether they carry `z` (default: the first row says).
    """
    path = Path(path)
    rows = iter(rows)
    first = next(rows, None)
    stack = (first is not None and "z" in first) if stack is None else stack
    columns = (("z",) if stack else ()) + OBJECT_COLUMNS
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in itertools.chain([first] if first is not None else [], rows):
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else int(v) if isinstance(v, bool) else v) for k, v in r.items()})
    return path
