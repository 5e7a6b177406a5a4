"""Instance separation (seeded watershed) and the per-object uncertainty table."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from probda_deploy.runtime.instances import (OBJECT_COLUMNS, InstanceConfig, component_radii, cut_sides,
                                             least_certain, object_areas, object_table, seed_reach, seedings,
                                             separate_instances, summarize_objects, typical, write_object_csv)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _soft(mask):
    return np.where(mask, 0.9, 0.05).astype(np.float32)


def test_two_touching_discs_are_two_objects():
    a, b = _ellipse((64, 80), 32, 25, 12, 12), _ellipse((64, 80), 32, 47, 12, 12)  # overlapping by 2 px
    assert (a & b).any()
    labels = separate_instances(_soft(a | b))
    assert labels.dtype == np.uint16 and labels.max() == 2
    ids_a, ids_b = np.unique(labels[a & ~b]), np.unique(labels[b & ~a])
    assert len(ids_a) == 1 and len(ids_b) == 1 and ids_a[0] != ids_b[0] and 0 not in (ids_a[0], ids_b[0])
    assert (labels > 0).sum() == (a | b).sum()  # the watershed keeps every mask pixel


def test_a_chain_of_three_touching_ellipses_is_three_objects():
    shape = (60, 120)
    parts = [_ellipse(shape, 30, cx, 10, 16) for cx in (25, 55, 85)]  # long axis along the chain
    mask = parts[0] | parts[1] | parts[2]
    from scipy import ndimage

    assert ndimage.label(mask)[1] == 1  # one connected component
    labels = separate_instances(_soft(mask))
    assert labels.max() == 3
    centre_ids = [labels[30, cx] for cx in (25, 55, 85)]
    assert len(set(centre_ids)) == 3 and 0 not in centre_ids


def _discs_and(extra, shape=(100, 240)):
    """Four lone discs of radius 14 (the median object) and `extra`, as a soft probability map."""
    mask = extra.copy()
    for cx in (20, 60, 100, 140):
        mask |= _ellipse(shape, 20, cx, 14, 14)
    return _soft(mask)


def test_a_clump_the_h_maxima_keep_whole_is_split_into_pieces_of_object_size():
    shape = (100, 240)
    pair = _ellipse(shape, 70, 40, 14, 14) | _ellipse(shape, 70, 61, 13, 13)  # pressed: a shallow neck
    prob = _discs_and(pair)
    coarse = InstanceConfig(seed_height=5, split=0)  # seeds that merge the pair
    assert separate_instances(prob, coarse)[70, 40] == separate_instances(prob, coarse)[70, 61]
    labels = separate_instances(prob, InstanceConfig(seed_height=5))  # + the split (default 0.6)
    assert labels.max() == 6 and labels[70, 40] != labels[70, 61] and 0 not in (labels[70, 40], labels[70, 61])
    assert (labels > 0).sum() == (prob > 0.5).sum()


def test_the_split_leaves_pieces_smaller_than_the_fraction_of_a_typical_object_attached():
    shape = (100, 240)
    bud = _ellipse(shape, 70, 150, 14, 14) | _ellipse(shape, 70, 168, 10, 10)  # the bud: ~0.5 of a median disc
    prob = _discs_and(bud)
    whole = separate_instances(prob, InstanceConfig(seed_height=5))
    assert whole.max() == 5 and whole[70, 150] == whole[70, 168]
    cut = separate_instances(prob, InstanceConfig(seed_height=5, split=0.01))  # the finer seeds do cut it
    assert cut.max() == 6 and cut[70, 150] != cut[70, 168]
    with pytest.raises(ValueError, match="split"):
        separate_instances(prob, InstanceConfig(split=-1))


def test_lone_specks_below_min_size_vanish_and_empty_input_gives_no_objects():
    mask = _ellipse((40, 40), 20, 20, 8, 8)
    mask[2, 2] = mask[2, 3] = True  # 2-px speck
    labels = separate_instances(_soft(mask), InstanceConfig(min_size=15))
    assert labels.max() == 1 and labels[2, 2] == 0
    assert separate_instances(np.zeros((8, 8), np.float32)).max() == 0
    with pytest.raises(ValueError, match="threshold"):
        separate_instances(np.zeros((8, 8), np.float32), InstanceConfig(threshold=1.5))


def test_object_table_matches_a_hand_computation(tmp_path):
    labels = np.zeros((4, 6), np.uint16)
    labels[0:2, 0:2] = 1  # 4 px, centroid (0.5, 0.5)
    labels[1:4, 4] = 2  # 3 px, centroid (2, 4)
    prob = np.full((4, 6), 0.1, np.float32)
    prob[0, 0], prob[0, 1], prob[1, 0], prob[1, 1] = 0.6, 0.8, 0.7, 0.9  # mean 0.75
    consensus = np.ones((4, 6), np.float32)
    consensus[1:4, 4] = [0.25, 0.5, 0.0]  # mean 0.25 -> uncertain
    std = np.zeros((4, 6), np.float32)
    std[1:4, 4] = 0.3
    rows = object_table(labels, {"prob": prob, "consensus": consensus, "std": std}, disagree=0.5)
    assert [r["id"] for r in rows] == [1, 2]
    one, two = rows
    assert (one["area"], one["centroid_y"], one["centroid_x"]) == (4, 0.5, 0.5)
    assert one["mean_prob"] == pytest.approx(0.75) and one["mean_consensus"] == 1.0 and not one["uncertain"]
    assert (two["area"], two["centroid_y"], two["centroid_x"]) == (3, 2.0, 4.0)
    assert two["mean_consensus"] == pytest.approx(0.25) and two["mean_std"] == pytest.approx(0.3) and two["uncertain"]
    assert least_certain(rows, 1)[0]["id"] == 2
    summary = summarize_objects(iter(rows), 1)  # one pass over a stream, as for a whole slide's table
    assert (summary.count, summary.uncertain, [r["id"] for r in summary.least_certain]) == (2, 1, [2])
    stack = write_object_csv(tmp_path / "empty_objects.csv", [], stack=True)
    assert stack.read_text().splitlines() == [",".join(("z",) + OBJECT_COLUMNS)]
    path = write_object_csv(tmp_path / "img_objects.csv", rows)
    read = list(csv.DictReader(open(path)))
    assert tuple(read[0]) == OBJECT_COLUMNS
    assert read[1] == {"id": "2", "centroid_y": "2.0000", "centroid_x": "4.0000", "area": "3", "mean_prob": "0.1000",
                       "mean_consensus": "0.2500", "mean_std": "0.3000", "uncertain": "1", "exact": "1"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_boundary_map_splits_objects_the_mask_fills_between():
    # two squares side by side: one rectangle in the mask, no neck for the distance transform to find
    shape = (40, 80)
    mask = np.zeros(shape, bool)
    mask[8:32, 10:70] = True
    assert separate_instances(_soft(mask)).max() == 1
    boundary = np.zeros(shape, np.float32)
    boundary[8:32, 39:41] = 0.8  # the predicted contact line (2 px, as find_boundaries thick draws it)
    labels = separate_instances(_soft(mask), boundary=boundary)
    assert labels.max() == 2 and labels[20, 20] != labels[20, 60]
    assert (labels > 0).sum() == mask.sum()  # the boundary pixels still belong to an object
    weak = np.where(boundary > 0, 0.3, 0.0).astype(np.float32)  # below 0.5: not a boundary
    assert separate_instances(_soft(mask), boundary=weak).max() == 1


def _wobbly_blobs(zoom: int) -> np.ndarray:
    """Twelve lone elliptic blobs with rough outlines, imaged at `zoom` x the magnification (same shapes)."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    shape = (160 * zoom, 320 * zoom)
    yy, xx = np.mgrid[: shape[0], : shape[1]] / zoom
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2 * zoom)
    noise /= noise.std()
    mask = np.zeros(shape, bool)
    for cy in (30, 80, 130):
        for cx in (40, 120, 200, 280):
            mask |= ((yy - cy) / 12) ** 2 + ((xx - cx) / 20) ** 2 + 0.25 * noise <= 1
    return _soft(mask)


def test_seeds_grow_with_objects_larger_than_the_reference_radius():
    fixed = InstanceConfig(reference_radius=0)
    small, large = _wobbly_blobs(1), _wobbly_blobs(2)
    assert separate_instances(small).max() == separate_instances(small, fixed).max() == 12  # radius ~11: seeds grown by ~1.1x, the same objects
    grown, not_grown = separate_instances(large).max(), separate_instances(large, fixed).max()
    assert not_grown >= 16 and grown <= 14  # 1 px seeds cut the rough outlines of large blobs; grown ones far less


@pytest.mark.parametrize("kind", ["clumps", "corners", "plateaus", "noise"])
@pytest.mark.parametrize("seed", range(6))
def test_a_window_labels_every_clump_it_holds_whole_as_the_whole_image(random_map, kind, seed):
    """The property that makes blockwise labelling exact: any window, however it cuts the map, gives each clump
    (connected component of the mask) it holds whole with room for its seeding (`cut_sides`) the whole image's
    objects, with the whole image's scale."""
    rng = np.random.default_rng(10 + seed)
    prob = random_map(kind, rng, shape=(120, 144), sparse=True)
    boundary = np.clip(rng.random(prob.shape) * 1.3, 0, 1).astype(np.float32) if seed % 3 == 2 else None
    cfg = InstanceConfig(min_size=int(rng.integers(0, 20)), split=float(rng.choice([0.0, 0.6])))
    mask, coarse, _ = seedings(prob, cfg, boundary)
    radius = typical(component_radii(mask, cfg.min_size))
    scale = (radius, typical(object_areas(mask, coarse, cfg.min_size)))
    whole = separate_instances(prob, cfg, boundary)
    room = seed_reach(cfg, radius)
    held = cut = 0
    for _ in range(20):
        y0, x0 = rng.integers(0, prob.shape[0] - 60), rng.integers(0, prob.shape[1] - 60)
        y1, x1 = rng.integers(y0 + 60, prob.shape[0] + 1), rng.integers(x0 + 60, prob.shape[1] + 1)
        win = (slice(y0, y1), slice(x0, x1))
        labels = separate_instances(prob[win], cfg, None if boundary is None else boundary[win], scale)
        pieces = ndimage.label(prob[win] >= cfg.threshold)[0]
        ids = np.unique(pieces)[1:]
        whole_ids = ids[~cut_sides(pieces, ids, (y0, y1, x0, x1), prob.shape, room).any(axis=1)]
        inside = np.isin(pieces, whole_ids)
        held, cut = held + len(whole_ids), cut + len(ids) - len(whole_ids)
        a, b = whole[win][inside].astype(np.int64), labels[inside].astype(np.int64)
        pairs = np.unique(np.stack([a, b]), axis=1)
        assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], "not the same objects"
        assert not np.isin(b[b > 0], labels[~inside]).any()  # the objects of whole clumps lie in them whole
    assert held > 0 and cut > 0, (held, cut)  # the windows held clumps whole and cut others
