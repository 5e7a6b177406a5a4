"""Objects from the mean probability: seeded-watershed instances and a per-object uncertainty table.

Touching nuclei share one connected component of the mask; the distance
transform of the mask has one maximum per roundish object, so its h-maxima
seed a watershed that cuts the necks between them. Numpy, scipy and
scikit-image only (no torch).
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

OBJECT_COLUMNS = ("id", "centroid_y", "centroid_x", "area", "mean_prob", "mean_consensus", "mean_std", "uncertain")


@dataclass(frozen=True)
class InstanceConfig:
    """Instance separation and object flagging.

    threshold: mask = mean probability >= threshold.
    seed_height: h of the h-maxima of the (smoothed) distance transform, in px: two maxima
        closer in height than this merge into one seed, so a larger value splits less.
    sigma: Gaussian smoothing of the distance transform (px) before seeding.
    min_size: objects smaller than this (px) are merged into a touching object or dropped.
    disagree: objects whose mean consensus is below this are flagged `uncertain`.
    block_halo: context (px) around each block when an OME-Zarr output is labelled block by block
        (zarr_instances.py): clumps of touching objects that fit in it get the ids of a one-piece run.
    """

    threshold: float = 0.5
    seed_height: float = 1.0
    sigma: float = 1.0
    min_size: int = 15
    disagree: float = 0.5
    block_halo: int = 64

    def check(self) -> None:
        """Raises ValueError naming the first value out of range (by its command-line option where it has one)."""
        if not 0 < self.threshold < 1:
            raise ValueError(f"--threshold {self.threshold}: must be between 0 and 1")
        if self.seed_height <= 0:
            raise ValueError(f"--seed-height {self.seed_height}: must be > 0 (smaller splits touching objects more)")
        if self.min_size < 0:
            raise ValueError(f"--min-size {self.min_size}: must be >= 0 px")
        if self.sigma < 0 or self.block_halo < 1:
            raise ValueError(f"instance sigma {self.sigma} must be >= 0 and block halo {self.block_halo} >= 1")


def instance_config(threshold: float = 0.5, seed_height: float = InstanceConfig.seed_height,
                    min_size: int = InstanceConfig.min_size) -> InstanceConfig:
    """The checked InstanceConfig of a user's options (`--threshold`, `--seed-height`, `--min-size`).

    Raises:
        ConfigError: a value out of range, named by its option.
    """
    cfg = InstanceConfig(threshold=float(threshold), seed_height=float(seed_height), min_size=int(min_size))
    try:
        cfg.check()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return cfg


def separate_instances(prob: np.ndarray, cfg: InstanceConfig = InstanceConfig(),
                       boundary: np.ndarray | None = None) -> np.ndarray:
    """One id per object: (H, W) mean probability -> (H, W) uint16 labels (uint32 above 65535 objects), 0 = background.

    With the boundary map of a boundary model, the distance transform is taken of the mask with the
    predicted boundaries (>= 0.5) cut out, so touching objects that the foreground fills between get
    one seed each; the watershed still floods the whole mask.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import relabel_sequential, watershed

    cfg.check()
    mask = prob >= cfg.threshold
    if not mask.any():
        return np.zeros(prob.shape, np.uint16)
    dist = ndimage.distance_transform_edt(mask if boundary is None else mask & (boundary < 0.5))
    if cfg.sigma > 0:
        dist = ndimage.gaussian_filter(dist, cfg.sigma)
    seeds = h_maxima(dist, cfg.seed_height).astype(bool) & mask
    markers, n = ndimage.label(seeds)
    components, n_comp = ndimage.label(mask)
    unseeded = np.setdiff1d(np.arange(1, n_comp + 1), components[seeds])
    if unseeded.size:  # components too flat for an h-maximum get a seed at their deepest point
        peaks = ndimage.maximum_position(dist, components, unseeded)
        for i, (y, x) in enumerate(peaks):
            markers[y, x] = n + 1 + i
    labels = watershed(-dist, markers, mask=mask)
    if cfg.min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < cfg.min_size)
        small = small[small > 0]
        if small.size:  # flood again without the small seeds: fragments join a neighbour, lone specks vanish
            markers[np.isin(labels, small)] = 0
            labels = watershed(-dist, markers, mask=mask)
            sizes = np.bincount(labels.ravel())
            labels[np.isin(labels, np.flatnonzero(sizes < cfg.min_size))] = 0
    labels = relabel_sequential(labels)[0]
    return labels.astype(np.uint16 if labels.max() < 65535 else np.uint32)


def object_table(labels: np.ndarray, maps: dict[str, np.ndarray], *, disagree: float = 0.5) -> list[dict]:
    """One row per object: id, centroid (y, x), area (px), mean prob / consensus / std, uncertain flag.

    Args:
        labels: (H, W) instance ids, 0 = background.
        maps: "prob", "consensus" and "std", each (H, W) float.
        disagree: `uncertain` = mean consensus < disagree (the samples disagree on the object).
    """
    return list(iter_rows(*object_sums(labels, maps), disagree=disagree))


SUMS = ("area", "y", "x", "prob", "consensus", "std")  # the columns of `object_sums`


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


def iter_rows(ids: np.ndarray, sums: np.ndarray, *, disagree: float = 0.5, planes: np.ndarray | None = None) -> Iterator[dict]:
    """Rows of the object table (see `object_table`) from per-object sums, one at a time (a whole slide's table is
    written without holding a dict per object); `planes`: each object's slice `z` (stacks)."""
    for j, i in enumerate(ids):
        a = sums[j, 0]
        m = sums[j] / max(a, 1)
        row = {"id": int(i), "centroid_y": float(m[1]), "centroid_x": float(m[2]), "area": int(a),
               "mean_prob": float(m[3]), "mean_consensus": float(m[4]), "mean_std": float(m[5]),
               "uncertain": bool(m[4] < disagree)}
        yield row if planes is None else {"z": int(planes[j]), **row}


LEAST_CERTAIN = 10  # objects a summary lists: per image, per batch (`probda segment`) and in reports


@dataclass(frozen=True)
class ObjectSummary:
    """What a report says of an image's objects: how many, how many flagged `uncertain`, the least certain rows."""

    count: int
    uncertain: int
    least_certain: tuple[dict, ...]


def summarize_objects(rows: Iterable[dict], n: int = LEAST_CERTAIN) -> ObjectSummary:
    """Count the rows (a list or a stream) and keep the n least certain (`least_certain`), in one pass."""
    counts = [0, 0]

    def counted():
        for r in rows:
            counts[0] += 1
            counts[1] += int(r["uncertain"])
            yield r

    least = least_certain(counted(), n)
    return ObjectSummary(counts[0], counts[1], tuple(least))


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
