"""Instances of an OME-Zarr output, block by block: the ids of the whole-image run, in bounded memory.

    objects = label_blocks(partial, layout, InstanceConfig(threshold=0.5), executor=executor)

Why it is exact: `instances.seedings` labels each clump (connected component
of the mask: touching objects) from its own pixels alone, in its bounding box
grown by the seeds' smoothing reach. So a block whose window holds whole,
with that room, every clump that touches its core labels its core exactly as
the whole image is labelled, and it knows each of its objects' first pixel in
the image: a name that every block gives the same object.

Runs in `ZarrSink.finish`, once every block of prob/consensus/std is written,
as passes of tasks over the output's chunk grid (any executor, any order).
Every task reads its core + `block_halo` and grows the window on the sides
that cut a clump touching the core (by block_halo, doubling each time) until
those clumps are whole, up to `max_window` px a side:
0. scale: each block returns the inscribed radii of the clumps whose first
   pixel lies in its core, then (with `InstanceConfig.split`) the areas of its
   h-maxima objects at the plane's radius; their medians per plane are what the
   TIFF path measures on the whole plane (`instances.typical`). The second
   pass keeps each window's seedings in CACHE for the label pass.
1. label: each block splits and numbers its window's objects as the TIFF path
   does and writes its core's ids, 1..n within the block, to
   `labels/instances/0`; it returns each id's first pixel in the image.
2. number (here, O(objects) memory): the objects of a plane are numbered in
   raster order of their first pixels, as `instances.number_in_raster_order`
   numbers the whole image, so the ids equal the TIFF path's.
3. relabel: each block maps its ids to global ones, writes every pyramid level
   and returns its per-object sums for the table (`instances.object_sums`).
A clump still cut at `max_window` is labelled from the largest window; its
objects are flagged `exact` = 0 in the table, and every object of a plane is
if such a clump entered the plane's typical object size.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..method import FLOAT_MAPS
from . import ome_zarr as oz
from .executors import LocalExecutor
from .instances import (SUMS, InstanceConfig, component_radii, first_pixels, merge_sums, object_areas,
                        object_sums, seed_reach, seedings, split_and_number, typical, cut_sides)
from .tiling import Tile, plan_tiles

log = logging.getLogger(__name__)

CACHE = ".instances-seedings"  # folder in the partial output: each window's seedings, from the scale pass to the label pass


@dataclass(frozen=True)
class BlockObjects:
    """The objects of a blockwise labelling: ids ascending, their `object_sums`, plane and exactness.

    ids: (n,) uint64; sums: (n, 6) float64 (columns `instances.SUMS`); planes: (n,) slice of each object
    (None for 2D); exact: (n,) bool, False where a clump larger than `max_window` may have changed the object.
    n = 0 when no table was asked for; `inexact` counts the objects not exact either way.
    """

    ids: np.ndarray
    sums: np.ndarray
    planes: np.ndarray | None
    exact: np.ndarray
    inexact: int = 0


def block_grid(layout: oz.ZarrLayout, halo: int) -> list[Tile]:
    """Tiles whose cores are the level-0 chunks of the output (row-major), windows grown by `halo`."""
    return plan_tiles(layout.shape[-2:], multiple=1, tile=layout.chunk, halo=halo)


def label_blocks(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, *, executor=None,
                 table: bool = True) -> BlockObjects:
    """Write `labels/instances` (all levels) of the output at `path` and return its objects.

    Args:
        path: the (partial) output, prob (+ consensus, std) written.
        layout: its layout (`layout.instances` set).
        cfg: instance settings (threshold, seeds, min size, block halo, max window).
        executor: runs the block tasks (default: LocalExecutor).
        table: also compute the per-object sums (needs the consensus and std channels).
    """
    cfg.check()
    executor = executor or LocalExecutor()
    tiles = block_grid(layout, cfg.block_halo)
    planes = [None] if len(layout.shape) == 2 else list(range(layout.shape[0]))
    keys = [(z, i) for z in planes for i in range(len(tiles))]
    scales, cut_scale = {z: None for z in planes}, {z: 0 for z in planes}
    if cfg.split > 0 or cfg.reference_radius > 0:  # each plane's typical object first, as the TIFF path measures it
        radii = _per_plane(executor, radius_task, [(path, layout, cfg, k[0], tiles[k[1]]) for k in keys], keys, planes)
        scales = {z: (radii[z][0], 0.0) for z in planes}
        cut_scale = {z: radii[z][1] for z in planes}
        if cfg.split > 0:
            areas = _per_plane(executor, area_task, [(path, layout, cfg, k[0], tiles[k[1]], scales[k[0]]) for k in keys], keys, planes)
            scales = {z: (radii[z][0], areas[z][0]) for z in planes}
            cut_scale = {z: cut_scale[z] + areas[z][1] for z in planes}
    try:
        found = dict(executor.run(label_task, [(_name(k), (path, layout, cfg, k[0], tiles[k[1]], scales[k[0]])) for k in keys]))
    finally:
        shutil.rmtree(Path(path) / CACHE, ignore_errors=True)
    luts, exact, counts = number_objects({k: found[_name(k)] for k in keys}, planes, cut_scale)
    inexact = int((~exact).sum())
    if inexact:
        log.warning("%s: %d objects lie in clumps larger than %d px (or decided a plane's object size) and may "
                    "differ from a whole-image run", path, inexact, cfg.max_window)
    jobs = [(_name(k), (path, layout, k[0], tiles[k[1]], luts[k], table)) for k in keys]
    parts = dict(executor.run(relabel_task, jobs))
    ids, sums = merge_sums([parts[_name(k)] for k in keys])
    log.info("%s: %d objects in %d blocks", path, len(exact), len(keys))
    at = ids.astype(np.int64) - 1
    obj_planes = None if planes[0] is None else np.searchsorted(np.cumsum(counts), at, side="right")
    return BlockObjects(ids, sums, obj_planes, exact[at], inexact)


def _name(key: tuple[int | None, int]) -> str:
    return f"{key[0] or 0}_{key[1]}"


def _read(path: Path, layout: oz.ZarrLayout, z: int | None, window: tuple[int, int, int, int]):
    """(prob window, boundary window or None) of one block."""
    import zarr

    root = zarr.open_group(str(path), mode="r")
    boundary = oz.read_region(root, layout, "boundary", z=z, region=window) if "boundary" in layout.channels else None
    return oz.read_region(root, layout, "prob", z=z, region=window), boundary


@dataclass(frozen=True)
class Window:
    """A block's grown window: bounds (y0, y1, x0, x1) in the image, its prob (and boundary) values, the
    core's slices in it, and `cut`: the pixels of clumps still cut at `max_window` (None when all are whole)."""

    bounds: tuple[int, int, int, int]
    prob: np.ndarray
    boundary: np.ndarray | None
    core: tuple[slice, slice]
    cut: np.ndarray | None
    cut_clumps: int = 0


def whole_window(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile,
                 reach_px: int) -> Window:
    """The block's window, grown until every clump (connected component of the mask) touching its core is
    whole in it with `reach_px` + 1 px to spare (`instances.cut_sides`), or `cfg.max_window` is hit."""
    shape = layout.shape[-2:]
    bounds, step = tile.window, cfg.block_halo
    while True:
        y0, y1, x0, x1 = bounds
        prob, boundary = _read(path, layout, z, bounds)
        labels = ndimage.label(prob >= cfg.threshold)[0]
        core = (slice(tile.core[0] - y0, tile.core[1] - y0), slice(tile.core[2] - x0, tile.core[3] - x0))
        ids = np.unique(labels[core])
        ids = ids[ids > 0]
        sides = cut_sides(labels, ids, bounds, shape, reach_px)
        cut = sides.any(axis=1)
        if not cut.any():
            return Window(bounds, prob, boundary, core, None)
        bigger = _grow(bounds, sides.any(axis=0), shape, step, cfg.max_window)
        if bigger == bounds:
            return Window(bounds, prob, boundary, core, np.isin(labels, ids[cut]), int(cut.sum()))
        bounds, step = bigger, 2 * step


def _grow(bounds: tuple[int, int, int, int], sides: list[bool], shape: tuple[int, int], step: int, max_window: int):
    """`bounds` moved out by `step` px on the cut `sides` (top, bottom, left, right), clipped to the image
    and to `max_window` px a side."""
    out = list(bounds)
    for axis in (0, 1):
        lo, hi = out[2 * axis], out[2 * axis + 1]
        room = max_window - (hi - lo)
        up = min(step, lo, room) if sides[2 * axis] else 0
        down = min(step, shape[axis] - hi, room - up) if sides[2 * axis + 1] else 0
        out[2 * axis], out[2 * axis + 1] = lo - max(up, 0), hi + max(down, 0)
    return tuple(out)


def _per_plane(executor, task, args: list[tuple], keys: list[tuple], planes: list) -> dict:
    """{plane: (the median of the values that `task` returns for the plane's blocks, clumps cut)}."""
    parts = dict(executor.run(task, [(_name(k), a) for k, a in zip(keys, args)]))
    return {z: (typical(np.concatenate([parts[_name(k)][0] for k in keys if k[0] == z])),
                sum(parts[_name(k)][1] for k in keys if k[0] == z)) for z in planes}


def radius_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile) -> tuple[np.ndarray, int]:
    """(the inscribed radii of the mask components whose first pixel is in the block's core, clumps cut)."""
    win = whole_window(path, layout, cfg, z, tile, reach_px=0)
    return component_radii(win.prob >= cfg.threshold, cfg.min_size, core=win.core), win.cut_clumps


def area_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile,
              scale: tuple[float, float]) -> tuple[np.ndarray, int]:
    """(the areas of the h-maxima objects (seeds at the plane's radius) whose first pixel is in the block's
    core, clumps cut); the window's seedings go to CACHE for `label_task`."""
    win = whole_window(path, layout, cfg, z, tile, reach_px=seed_reach(cfg, scale[0]))
    mask, coarse, fine = seedings(win.prob, cfg, win.boundary, scale[0])
    if fine is not None:
        (Path(path) / CACHE).mkdir(exist_ok=True)
        cut = np.zeros(0, bool) if win.cut is None else win.cut
        np.savez_compressed(_cached(path, z, tile), bounds=np.array(win.bounds), coarse=coarse, fine=fine, cut=cut)
    return object_areas(mask, coarse, cfg.min_size, core=win.core), win.cut_clumps


def _cached(path: Path, z: int | None, tile: Tile) -> Path:
    return Path(path) / CACHE / f"{z or 0}_{tile.core[0]}_{tile.core[2]}.npz"


def label_task(path: Path, layout: oz.ZarrLayout, cfg: InstanceConfig, z: int | None, tile: Tile,
               scale: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Label one block from its whole window; write its core's ids (1..n) at level 0.

    Returns:
        (first (n,) int64: each id's first pixel as a flat index into the plane, exact (n,) bool).
    """
    import zarr

    cached = _cached(path, z, tile)
    if scale is not None and cached.exists():  # the scale pass's seedings of this window: only the split is left
        with np.load(cached) as seeds:
            bounds, cut = tuple(int(v) for v in seeds["bounds"]), seeds["cut"]
            window = split_and_number(None, seeds["coarse"], seeds["fine"], cfg, scale[1])
        cut = cut if cut.size else None
    else:
        radius = scale[0] if scale is not None else 0.0
        win = whole_window(path, layout, cfg, z, tile, reach_px=seed_reach(cfg, radius))
        bounds, cut = win.bounds, win.cut
        window = split_and_number(*seedings(win.prob, cfg, win.boundary, radius), cfg, scale[1] if scale else None)
    y0, _, x0, _ = bounds
    ys, xs = slice(tile.core[0] - y0, tile.core[1] - y0), slice(tile.core[2] - x0, tile.core[3] - x0)
    ids, first = first_pixels(window)
    here = np.isin(ids, window[ys, xs])
    ids, first = ids[here], first[here]
    lut = np.zeros(int(window.max()) + 1, np.uint32)
    lut[ids] = np.arange(1, len(ids) + 1)
    root = zarr.open_group(str(path), mode="r+")
    oz.write_label(root, layout, "instances", origin=_origin(z, tile), block=lut[window[ys, xs]], levels=1)
    fy, fx = np.unravel_index(first, window.shape)
    exact = np.ones(len(ids), bool) if cut is None else ~np.isin(ids, window[cut])
    return (fy + y0) * layout.shape[-1] + (fx + x0), exact


def number_objects(found: dict[tuple, tuple[np.ndarray, np.ndarray]], planes: list,
                   cut_scale: dict) -> tuple[dict[tuple, np.ndarray], np.ndarray, list[int]]:
    """({block key: lut (n + 1,) uint32 from the block's ids to global ids}, exact (N,) bool per global id - 1,
    the number of objects per plane).

    A plane's objects are numbered in raster order of their first pixels, after the previous planes' objects;
    an object is exact when every block that holds part of it says so and its plane's scale was measured
    on whole clumps.
    """
    luts, exact, offset = {}, [], 0
    for z in planes:
        keys = [k for k in found if k[0] == z]
        names = np.unique(np.concatenate([found[k][0] for k in keys]))
        ok = np.full(len(names), cut_scale[z] == 0)
        for k in keys:
            at = np.searchsorted(names, found[k][0])
            ok[at[~found[k][1]]] = False
            luts[k] = np.concatenate([[0], offset + at + 1]).astype(np.uint32)
        exact.append(ok)
        offset += len(names)
    return luts, np.concatenate(exact), [len(e) for e in exact]


def relabel_task(path: Path, layout: oz.ZarrLayout, z: int | None, tile: Tile, lut: np.ndarray,
                 table: bool) -> tuple[np.ndarray, np.ndarray]:
    """Map one block's ids to global ids, write all levels; its `object_sums` (empty without `table`)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    labels = lut[oz.read_region(root, layout, "instances", z=z, region=tile.core)]
    oz.write_label(root, layout, "instances", origin=_origin(z, tile), block=labels)
    if not table:
        return np.zeros(0, np.uint64), np.zeros((0, len(SUMS)))
    maps = {k: oz.read_region(root, layout, k, z=z, region=tile.core) for k in FLOAT_MAPS}
    return object_sums(labels, maps, origin=(tile.core[0], tile.core[2]))


def _origin(z: int | None, tile: Tile) -> tuple[int, ...]:
    return ((z,) if z is not None else ()) + (tile.core[0], tile.core[2])
