"""Blockwise instances of an OME-Zarr output: one id per object across block borders, equal to the one-piece run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import zarr

from probda_deploy.method import ALL_MAPS, FLOAT_MAPS
from probda_deploy.runtime import ome_zarr as oz
from probda_deploy.runtime.instances import (InstanceConfig, iter_rows, object_table, separate_instances, summarize_objects,
                                             write_object_csv)
from probda_deploy.runtime.zarr_instances import CACHE, block_grid, label_blocks


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _output(tmp_path: Path, prob: np.ndarray, chunk: int, consensus=None, std=None,
            boundary=None) -> tuple[Path, oz.ZarrLayout]:
    """A partial OME-Zarr output with these maps written block by block, as the engine writes them."""
    maps = {"prob": prob, "consensus": np.ones_like(prob) if consensus is None else consensus,
            "std": np.zeros_like(prob) if std is None else std}
    channels = FLOAT_MAPS
    if boundary is not None:
        maps["boundary"], channels = boundary, ALL_MAPS
    layout = oz.ZarrLayout(shape=prob.shape, chunk=chunk, levels=2, channels=channels, mask=True, instances=True)
    path = tmp_path / "img.ome.zarr.partial"
    oz.create_output(path, layout, metadata={})
    planes = [None] if prob.ndim == 2 else range(prob.shape[0])
    for z in planes:
        for i, t in enumerate(block_grid(layout, 0)):
            y0, y1, x0, x1 = t.core
            block = {k: (v if z is None else v[z])[y0:y1, x0:x1] for k, v in maps.items()}
            block["mask"] = (block["prob"] >= 0.5).astype(np.uint8)
            oz.write_block(path, layout, key=f"{z}_{i}", origin=(() if z is None else (z,)) + (y0, x0), maps=block)
    return path, layout


def _instances(path: Path, level: int = 0) -> np.ndarray:
    return zarr.open_group(str(path), mode="r")[f"labels/instances/{level}"][:]


def _same_up_to_numbering(a: np.ndarray, b: np.ndarray) -> int:
    """Assert a one-to-one map between the ids of a and b (background to background); the object count."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], "not a relabelling"
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()
    return int((pairs[0] > 0).sum())


def test_an_object_straddling_block_borders_gets_one_id(tmp_path):
    shape = (48, 64)
    corner = _disc(shape, 16, 16, 6)  # centred on the corner of four 16 px blocks
    long = np.zeros(shape, bool)
    long[36:41, 8:60] = True  # a bar across three vertical borders
    left, right = _disc(shape, 14, 40, 6), _disc(shape, 14, 51, 6)  # two touching discs, the right one across the border at x = 48
    assert (left & right).any()
    prob = np.where(corner | long | left | right, 0.9, 0.1).astype(np.float32)
    path, layout = _output(tmp_path, prob, chunk=16)
    ids = label_blocks(path, layout, InstanceConfig(block_halo=16)).ids
    labels = _instances(path)
    for obj in (corner, long):
        assert len(np.unique(labels[obj])) == 1 and labels[obj][0] > 0
    assert len(np.unique(labels[left & ~right])) == 1 and len(np.unique(labels[right & ~left])) == 1
    assert labels[14, 36] != labels[14, 55]  # the touching pair stays two objects
    assert labels.max() == 4 and ids.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(_instances(path, 1), labels[::2, ::2])  # pyramid: nearest
    # a halo of 1 px still never cuts: the borders are joined wherever the two blocks' ids meet
    path2, _ = _output(tmp_path / "h1", prob, chunk=16)
    label_blocks(path2, layout, InstanceConfig(block_halo=1))
    thin = _instances(path2)
    for obj in (corner, long):
        assert len(np.unique(thin[obj])) == 1


def test_blockwise_ids_equal_the_whole_image_up_to_numbering(tmp_path):
    rng = np.random.default_rng(0)
    shape = (2, 150, 130)
    mask = np.zeros(shape, bool)
    for z in range(2):
        for _ in range(30):
            mask[z] |= _disc(shape[1:], rng.uniform(0, 150), rng.uniform(0, 130), rng.uniform(4, 9))
    prob = np.where(mask, 0.8, 0.2).astype(np.float32)
    consensus = rng.random(shape).astype(np.float32)
    std = rng.random(shape).astype(np.float32)
    path, layout = _output(tmp_path, prob, chunk=32, consensus=consensus, std=std)
    found = label_blocks(path, layout, InstanceConfig())
    rows = list(iter_rows(found.ids, found.sums, planes=found.planes, exact=found.exact))
    labels = _instances(path)
    n = 0
    for z in range(2):
        n += _same_up_to_numbering(labels[z], separate_instances(prob[z]))
    assert n == len(rows) == labels.max() > 40 and set(np.unique(labels[0])) & set(np.unique(labels[1])) == {0}
    # the split by object-scaled seeds acted here, with each plane's scale pooled over its blocks
    assert sum(int(separate_instances(prob[z], InstanceConfig(split=0)).max()) for z in range(2)) < n
    assert not (path / CACHE).exists()  # the seedings kept from the scale pass to the label pass are gone
    expected = [{"z": z, **r} for z in range(2)
                for r in object_table(labels[z], {"prob": prob[z], "consensus": consensus[z], "std": std[z]})]
    assert [r["z"] for r in rows] == [r["z"] for r in expected]
    for got, want in zip(rows, expected):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-9)


def test_object_csv_of_blocks_matches_a_hand_computation(tmp_path):
    prob = np.full((8, 12), 0.1, np.float32)
    prob[1:4, 2:7] = 0.8  # object a: 3 x 5 = 15 px across the border at x = 4, centroid (2, 4)
    prob[5:8, 6:10] = 0.6  # object b: 3 x 4 = 12 px across the border at x = 8, centroid (6, 7.5)
    consensus = np.ones_like(prob)
    consensus[5:8, 6:10] = 0.25
    std = np.zeros_like(prob)
    std[5:8, 6:10] = 0.2
    path, layout = _output(tmp_path, prob, chunk=4, consensus=consensus, std=std)
    found = label_blocks(path, layout, InstanceConfig(min_size=0, sigma=0, block_halo=4))
    assert found.planes is None and found.exact.all()
    out = write_object_csv(tmp_path / "img_objects.csv", iter_rows(found.ids, found.sums, exact=found.exact))
    assert list(csv.DictReader(open(out))) == [
        {"id": "1", "centroid_y": "2.0000", "centroid_x": "4.0000", "area": "15", "mean_prob": "0.8000",
         "mean_consensus": "1.0000", "mean_std": "0.0000", "uncertain": "0", "exact": "1"},
        {"id": "2", "centroid_y": "6.0000", "centroid_x": "7.5000", "area": "12", "mean_prob": "0.6000",
         "mean_consensus": "0.2500", "mean_std": "0.2000", "uncertain": "1", "exact": "1"},
    ]


# -- the property: blockwise ids equal the whole-image ids, for any probability map --------------------------

CASES = [(kind, seed, chunk, cfg) for seed, (kind, chunk, cfg) in enumerate([
    ("clumps", 24, InstanceConfig(block_halo=4)),
    ("clumps", 32, InstanceConfig(block_halo=8, split=0)),
    ("clumps", 40, InstanceConfig(block_halo=2, sigma=0, min_size=0)),
    ("corners", 24, InstanceConfig(block_halo=1)),
    ("corners", 32, InstanceConfig(block_halo=16, reference_radius=0)),
    ("plateaus", 24, InstanceConfig(block_halo=4)),
    ("plateaus", 40, InstanceConfig(block_halo=4, seed_height=0.5, split=0.3)),
    ("noise", 32, InstanceConfig(block_halo=4)),
    ("noise", 20, InstanceConfig(block_halo=8, min_size=3, sigma=2)),
])]


@pytest.mark.parametrize("kind,seed,chunk,cfg", CASES, ids=[f"{c[0]}-{c[2]}px-{i}" for i, c in enumerate(CASES)])
def test_blockwise_ids_equal_the_whole_image_ids_for_any_map(tmp_path, random_map, kind, seed, chunk, cfg):
    rng = np.random.default_rng(seed)
    prob = random_map(kind, rng)
    boundary = None
    if seed % 3 == 2:  # a boundary model's map as well: the seeds come from the mask with its boundaries cut out
        boundary = np.clip(rng.random(prob.shape) * (prob >= 0.5) * 1.3, 0, 1).astype(np.float32)
    path, layout = _output(tmp_path, prob, chunk=chunk, boundary=boundary)
    found = label_blocks(path, layout, cfg)
    whole = separate_instances(prob, cfg, boundary)
    np.testing.assert_array_equal(_instances(path), whole)  # the same ids, not only the same objects
    assert found.exact.all() and found.inexact == 0 and found.ids.tolist() == list(range(1, int(whole.max()) + 1))


def test_a_clump_larger_than_the_largest_window_is_flagged_never_silently_changed(tmp_path):
    shape = (40, 200)
    mask = np.zeros(shape, bool)
    for x in range(6, 196, 9):  # a chain of touching discs across the image: one clump 200 px wide
        mask |= _disc(shape, 12, x, 5.5)
    for x in (20, 90, 160):  # and lone discs below it
        mask |= _disc(shape, 32, x, 5)
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    path, layout = _output(tmp_path, prob, chunk=16)
    cfg = InstanceConfig(block_halo=4, max_window=64, split=0, reference_radius=0)  # no scale pass
    found = label_blocks(path, layout, cfg)
    labels, whole = _instances(path), separate_instances(prob, cfg)
    chain = np.unique(labels[:24])[1:]
    assert not found.exact[np.isin(found.ids, chain)].any() and found.inexact == len(chain)
    lone = found.ids[found.exact]
    assert len(lone) == 3 and all(np.array_equal(labels == i, whole == whole[labels == i][0]) for i in lone)
    rows = list(iter_rows(found.ids, found.sums, exact=found.exact))
    assert sorted(r["id"] for r in rows if not r["exact"]) == chain.tolist()
    # the default settings measure the plane's typical object first: cut clumps make that scale, so every object, uncertain
    path2, _ = _output(tmp_path / "scaled", prob, chunk=16)
    found = label_blocks(path2, layout, InstanceConfig(block_halo=4, max_window=64))
    assert found.inexact == len(found.ids) > 0 and not found.exact.any()
    assert summarize_objects(iter_rows(found.ids, found.sums, exact=found.exact)).inexact == len(found.ids)
