"""Instances of an OME-Zarr output, block by block: one id per object across block borders, bounded memory.

    rows = label_blocks(partial, layout, InstanceConfig(threshold=0.5), executor=executor)

Runs in `ZarrSink.finish`, once every block of prob/consensus/std is written,
as passes of tasks over the output's chunk grid (any executor, any order):
0. scale: each block returns the inscribed radii of the mask components whose
   deepest point lies in its core, then (with `InstanceConfig.split`) the areas
   of its h-maxima objects at the plane's radius; their medians per plane are
   what the TIFF path measures on the whole plane (`instances.typical`). The
   second pass keeps each window's two seedings in CACHE for the label pass.
1. label: each block reads its prob window (core + `block_halo`), runs the same
   `separate_instances` as the TIFF path, and writes the core's ids, numbered
   1..n within the block, to `labels/instances/0`. It returns its n and, for
   each inner border, the ids on both sides of it: its own outermost core
   row/column, and the row/column just beyond the core as its window saw them.
2. merge (here, O(objects) memory): an object crossing a border is seen by
   both blocks' windows, so the two numberings meet pixel by pixel on the
   border rows; every such pair is joined (scipy's connected components on
   the pair graph) and the components, in block order, are the global ids.
   Joining every pair means an object is never cut at a block border; two
   objects are merged only where the two windows split a clump differently.
3. relabel: each block maps its ids to global ones, writes every pyramid level
   and returns its per-object sums for the table (`instances.object_sums`).
When every clump of touching objects fits in core + block_halo, the ids equal
those of `separate_instances` on the whole image, up to numbering.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from . import ome_zarr as oz
from .executors import LocalExecutor
from .instances import (SUMS, InstanceConfig, component_radii, merge_sums, object_areas, object_sums, seedings,
                        separate_instances, split_and_number, typical)
from .tiling import Tile, plan_tiles

log = logging.getLogger(__name__)

SIDES = {"bottom": "top", "right": "left"}  # the two borders a block shares with a later block
CACHE = ".instances-seedings"  # folder in the partial output: each window's seedings, from the scale pass to the label pass


def block_grid(layout: oz.ZarrLayout, halo: int) -> list[Tile]:
    """Tiles whose cores are the level-0 chunks of the output (row-major), windows grown by `halo`."""
    return plan_tiles(layout.shape[-2:], multiple=1, tile=layout.chunk, halo=halo)


def label_blocks(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, *, executor=None,
                 table: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Write `labels/instances` (all levels) of the output at `path` and return its object table.

    Args:
        path: the (partial) output, prob (+ consensus, std) written.
        layout: its layout (`layout.instances` set).
        cfg: instance settings (threshold, seeds, min size, block halo).
        executor: runs the block tasks (default: LocalExecutor).
        table: also compute the per-object rows (needs the consensus and std channels).

    Returns:
        (ids (n,), sums (n, 6), planes (n,) or None for 2D) of the objects, ids ascending (see
        `instances.object_sums`; `instances.iter_rows` turns them into table rows); n = 0 without `table`.
    """
    cfg.check()
    executor = executor or LocalExecutor()
    tiles = block_grid(layout, cfg.block_halo)
    planes = [None] if len(layout.shape) == 2 else list(range(layout.shape[0]))
    keys = [(z, i) for z in planes for i in range(len(tiles))]
    scales = {z: None for z in planes}
    if cfg.split > 0 or cfg.reference_radius > 0:  # each plane's typical object first, as the TIFF path measures it
        radii = _per_plane(executor, radius_task, [(path, layout, cfg, k[0], tiles[k[1]]) for k in keys], keys, planes)
        scales = {z: (radii[z], 0.0) for z in planes}
        if cfg.split > 0:
            areas = _per_plane(executor, area_task, [(path, layout, cfg, k[0], tiles[k[1]], scales[k[0]]) for k in keys], keys, planes)
            scales = {z: (radii[z], areas[z]) for z in planes}
    try:
        found = dict(executor.run(label_task, [(_name(k), (path, layout, cfg, k[0], tiles[k[1]], scales[k[0]])) for k in keys]))
    finally:
        shutil.rmtree(Path(path) / CACHE, ignore_errors=True)
    luts = merge_borders(tiles, {k: found[_name(k)] for k in keys})
    jobs = [(_name(k), (path, layout, k[0], tiles[k[1]], luts[k], table)) for k in keys]
    parts = dict(executor.run(relabel_task, jobs))
    ids, sums = merge_sums([parts[_name(k)] for k in keys])
    log.info("%s: %d objects in %d blocks", path, len(ids), len(keys))
    if planes[0] is None:
        return ids, sums, None
    ends = np.maximum.accumulate([max((int(luts[k].max()) for k in keys if k[0] == z), default=0) for z in planes])
    return ids, sums, np.searchsorted(ends, ids, side="left")  # ids of plane z are (ends[z-1], ends[z]]


def _name(key: tuple[int | None, int]) -> str:
    return f"{key[0] or 0}_{key[1]}"


def _read(path: Path, layout: oz.ZarrLayout, z: int | None, tile: Tile, mode: str = "r"):
    """(zarr root, prob window, boundary window or None) of one block."""
    import zarr

    root = zarr.open_group(str(path), mode=mode)
    boundary = oz.read_region(root, layout, "boundary", z=z, region=tile.window) if "boundary" in layout.channels else None
    return root, oz.read_region(root, layout, "prob", z=z, region=tile.window), boundary


def _per_plane(executor, task, args: list[tuple], keys: list[tuple], planes: list) -> dict:
    """{plane: the median of the values that `task` returns for the plane's blocks}."""
    parts = dict(executor.run(task, [(_name(k), a) for k, a in zip(keys, args)]))
    return {z: typical(np.concatenate([parts[_name(k)] for k in keys if k[0] == z])) for z in planes}


def radius_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile) -> np.ndarray:
    """The inscribed radii of the mask components of one block's window whose deepest point is in its core."""
    _, prob, _ = _read(path, layout, z, tile)
    return component_radii(prob >= cfg.threshold, cfg.min_size, core=tile.core_in_window())


def area_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile,
              scale: tuple[float, float]) -> np.ndarray:
    """The areas of the h-maxima objects (seeds at the plane's radius) of one block's window whose deepest
    point is in its core; the window's two seedings go to CACHE for `label_task`."""
    _, prob, boundary = _read(path, layout, z, tile)
    mask, coarse, fine = seedings(prob, cfg, boundary, scale[0])
    if fine is not None:
        (Path(path) / CACHE).mkdir(exist_ok=True)
        np.savez_compressed(_cached(path, z, tile), coarse=coarse, fine=fine)
    return object_areas(mask, coarse, cfg.min_size, core=tile.core_in_window())


def _cached(path: Path, z: int | None, tile: Tile) -> Path:
    return Path(path) / CACHE / f"{z or 0}_{tile.core[0]}_{tile.core[2]}.npz"


def label_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile,
               scale: tuple[float, float] | None = None) -> tuple[int, dict]:
    """Label one block from its prob window (and boundary window); write its core's ids (1..n) at level 0.

    Returns:
        (n, {side: (ids on the core's outermost row/column, ids just beyond it)}) for each side
        with a neighbour ("top", "bottom", "left", "right"); ids outside the core are 0.
    """
    import zarr

    cached = _cached(path, z, tile)
    if scale is not None and cached.exists():  # the scale pass's seedings of this window: only the split is left
        with np.load(cached) as seeds:
            window = split_and_number(None, seeds["coarse"], seeds["fine"], cfg, scale[1])
        root = zarr.open_group(str(path), mode="r+")
    else:
        root, prob, boundary = _read(path, layout, z, tile, mode="r+")
        window = separate_instances(prob, cfg, boundary, scale)
    ys, xs = tile.core_in_window()
    ids = np.unique(window[ys, xs])
    ids = ids[ids > 0]
    lut = np.zeros(int(window.max()) + 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1)
    local = lut[window]
    (y0, y1, x0, x1), (wy0, wy1, wx0, wx1) = tile.core, tile.window
    oz.write_label(root, layout, "instances", origin=_origin(z, tile), block=local[ys, xs], levels=1)
    r0, r1, c0, c1 = y0 - wy0, y1 - wy0, x0 - wx0, x1 - wx0  # core bounds in window coordinates
    faces = {}
    if y0 > wy0:
        faces["top"] = (local[r0, c0:c1], local[r0 - 1, c0:c1])
    if y1 < wy1:
        faces["bottom"] = (local[r1 - 1, c0:c1], local[r1, c0:c1])
    if x0 > wx0:
        faces["left"] = (local[r0:r1, c0], local[r0:r1, c0 - 1])
    if x1 < wx1:
        faces["right"] = (local[r0:r1, c1 - 1], local[r0:r1, c1])
    return len(ids), faces


def merge_borders(tiles: list[Tile], found: dict[tuple, tuple[int, dict]]) -> dict[tuple, np.ndarray]:
    """{block key: lut (n + 1,) uint32 from the block's ids to global ids}; blocks of one plane only meet each other."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keys = list(found)
    counts = np.array([found[k][0] for k in keys], np.int64)
    offsets = dict(zip(keys, np.concatenate([[0], np.cumsum(counts)[:-1]])))
    at = {(t.core[0], t.core[2]): i for i, t in enumerate(tiles)}
    u, v = [], []
    for z, i in keys:
        y0, y1, x0, x1 = tiles[i].core
        for side, start in (("bottom", (y1, x0)), ("right", (y0, x1))):
            if side not in found[(z, i)][1] or start not in at:
                continue
            j = at[start]
            inside, beyond = found[(z, i)][1][side]
            other_inside, other_beyond = found[(z, j)][1][SIDES[side]]
            for a, b in ((beyond, other_inside), (inside, other_beyond)):  # the same pixels, seen by both blocks
                both = (a > 0) & (b > 0)
                u.append(offsets[(z, i)] + a[both].astype(np.int64) - 1)
                v.append(offsets[(z, j)] + b[both].astype(np.int64) - 1)
    total = int(counts.sum())
    u = np.concatenate(u) if u else np.zeros(0, np.int64)
    v = np.concatenate(v) if v else np.zeros(0, np.int64)
    _, comp = connected_components(coo_matrix((np.ones(len(u)), (u, v)), shape=(total, total)), directed=False)
    _, first = np.unique(comp, return_index=True)  # number components by their first node: ids follow block order
    rank = np.empty(len(first), np.uint32)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return {k: np.concatenate([[0], rank[comp[offsets[k]: offsets[k] + found[k][0]]]]).astype(np.uint32) for k in keys}


def relabel_task(path: Path, layout: oz.ZarrLayout, z: int | None, tile: Tile, lut: np.ndarray,
                 table: bool) -> tuple[np.ndarray, np.ndarray]:
    """Map one block's ids to global ids, write all levels; its `object_sums` (empty without `table`)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    labels = lut[oz.read_region(root, layout, "instances", z=z, region=tile.core)]
    oz.write_label(root, layout, "instances", origin=_origin(z, tile), block=labels)
    if not table:
        return np.zeros(0, np.uint64), np.zeros((0, len(SUMS)))
    maps = {k: oz.read_region(root, layout, k, z=z, region=tile.core) for k in ("prob", "consensus", "std")}
    return object_sums(labels, maps, origin=(tile.core[0], tile.core[2]))


def _origin(z: int | None, tile: Tile) -> tuple[int, ...]:
    return ((z,) if z is not None else ()) + (tile.core[0], tile.core[2])
