"""Picture panels: colour coding of the error map and overlay, figure size with and without labels."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np

from probda_deploy.evaluation import ImageMaps
from probda_deploy.report.panels import ERROR_COLORS, error_rgb, overlay_rgb, panel_size, render_panel


def test_error_map_colors():
    pred = np.array([[1, 1], [0, 0]], bool)
    label = np.array([[1, 0], [1, 0]], np.float32)
    rgb = error_rgb(pred, label)
    assert tuple(rgb[0, 0]) == tuple(np.float32(ERROR_COLORS["true positive"]))
    assert tuple(rgb[0, 1]) == tuple(np.float32(ERROR_COLORS["false positive"]))
    assert tuple(rgb[1, 0]) == tuple(np.float32(ERROR_COLORS["false negative"]))
    assert tuple(rgb[1, 1]) == (0, 0, 0)


def test_overlay_tints_only_the_mask():
    image = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (20, 1))
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    rgb = overlay_rgb(image, mask)
    assert np.allclose(rgb[~mask][:, 0], rgb[~mask][:, 2])  # gray outside
    assert (rgb[mask][:, 0] > rgb[mask][:, 2]).all()  # orange inside


def test_panel_sizes(tmp_path):
    rng = np.random.default_rng(0)
    maps = ImageMaps(image=rng.random((40, 56), np.float32), prob=rng.random((40, 56), np.float32),
                     consensus=rng.random((40, 56), np.float32), std=np.zeros((40, 56), np.float32))
    w, h = panel_size(1)
    img = iio.imread(render_panel(maps, tmp_path / "a.png", title="no labels"))
    assert img.shape[:2] == (h, w) and img.std() > 10
