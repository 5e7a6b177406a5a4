"""Tiling geometry and the seam test: tiled == untiled (1e-4)."""

from __future__ import annotations

import numpy as np
import pytest

from probda_deploy.runtime import OnnxBackend, plan_tiles
from probda_deploy.runtime import onnx_backend as backend_module
from probda_deploy.runtime.tiling import image_stats, read_window


def test_cores_partition_the_padded_image_and_windows_align():
    tiles = plan_tiles((70, 83), multiple=4, tile=30, halo=10)
    cover = np.zeros((72, 84), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        assert all(v % 4 == 0 for v in (*t.core, *t.window))
        assert wy0 <= y0 and wy1 >= y1 and 0 <= wy0 and wy1 <= 72 and wx1 <= 84
        assert (y0 - wy0 >= 12 or wy0 == 0) and (wy1 - y1 >= 12 or wy1 == 72)
    assert np.all(cover == 1)
    assert plan_tiles((70, 83), multiple=4, tile=None, halo=10) == plan_tiles((70, 83), multiple=4, tile=0, halo=3)


@pytest.mark.parametrize("shape", [(13, 18), (3, 2)])
def test_read_window_pads_like_the_network(shape):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    ph, pw = (-shape[0]) % 4, (-shape[1]) % 4
    mode = "reflect" if ph < shape[0] and pw < shape[1] else "edge"
    full = np.pad(img, ((0, ph), (0, pw)), mode=mode)
    np.testing.assert_array_equal(read_window(img, (0, full.shape[0], 0, full.shape[1]), multiple=4), full)
    np.testing.assert_array_equal(read_window(img, (full.shape[0] - 4, full.shape[0], 0, 4), multiple=4), full[-4:, :4])


def test_image_stats_in_row_blocks():
    img = np.random.default_rng(1).uniform(100, 200, (101, 37)).astype(np.float32)
    mean, std = image_stats(img, rows=10)
    assert mean == pytest.approx(float(img.mean(dtype=np.float64)), rel=1e-9)
    assert std == pytest.approx(float(img.std(dtype=np.float64)), rel=1e-7)


def test_tiled_equals_untiled(punet_export, blobs, maps_close):
    sampler = OnnxBackend(punet_export, device="cpu")
    assert sampler.manifest["model"]["config"]["align_corners"] is False
    img = blobs((150, 133)) * 300 + 1000
    eps = np.random.default_rng(2).standard_normal((6, 6)).astype(np.float32)
    calls = []
    whole = sampler.predict(img, eps=eps, tile=None)
    tiled = sampler.predict(img, eps=eps, tile=48, on_tile=lambda d, n: calls.append((d, n)))
    assert calls and calls[-1][1] == 2 * 12, "4 x 3 tiles, prior pass + decoder pass"
    maps_close(tiled, whole, atol=1e-4)  # windows of other shapes: float precision, not bits
    assert whole["std"].max() > 1e-3


def test_prior_pass_reads_only_the_prior_trunks_context(punet_export, blobs, monkeypatch, maps_close):
    sampler = OnnxBackend(punet_export, device="cpu")
    rf = sampler.manifest["receptive_field"]
    assert sampler.prior_halo < sampler.default_halo and sampler.prior_halo >= rf["prior_radius"] > 0
    img = blobs((300, 280), seed=4) * 300 + 1000
    eps = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    windows = {"prior": [], "decode": []}
    prior_sum, predict_tile = sampler.prior_sum, sampler.predict_tile
    monkeypatch.setattr(sampler, "prior_sum", lambda w, t: (windows["prior"].append((w.shape[-2:], t)), prior_sum(w, t))[1])
    monkeypatch.setattr(sampler, "predict_tile", lambda w, t, *a, **k: (windows["decode"].append((w.shape[-2:], t)), predict_tile(w, t, *a, **k))[1])
    tiled = sampler.predict(img, eps=eps, tile=48)
    assert [t.core for _, t in windows["prior"]] == [t.core for _, t in windows["decode"]]
    for (shape, t), (shape_dec, _) in zip(windows["prior"], windows["decode"]):
        y0, y1, x0, x1 = t.core
        assert shape[0] <= y1 - y0 + 2 * sampler.prior_halo and shape[1] <= x1 - x0 + 2 * sampler.prior_halo
        assert shape[0] * shape[1] <= shape_dec[0] * shape_dec[1]
    assert any(s[0] * s[1] < d[0] * d[1] for (s, _), (d, _) in zip(windows["prior"], windows["decode"]))
    whole = sampler.predict(img, eps=eps, tile=None)
    maps_close(tiled, whole, atol=1e-4)  # windows of other shapes: float precision, not bits
    # a smaller halo than the prior's asked for by the user is used by both passes
    tiles = sampler.plan((300, 280), tile=48, halo=8)
    assert [t.window for t in sampler.prior_tiles(tiles, (300, 280), halo=8)] == [t.window for t in tiles]


def test_image_smaller_than_a_tile(punet_export, blobs):
    sampler = OnnxBackend(punet_export, device="cpu")
    img = blobs((19, 26), seed=3)
    eps = np.random.default_rng(4).standard_normal((3, 6)).astype(np.float32)
    small = sampler.predict(img, eps=eps, tile=256, halo=64)
    whole = sampler.predict(img, eps=eps, tile=None)
    assert small["prob"].shape == (19, 26)
    np.testing.assert_allclose(small["prob"], whole["prob"], atol=1e-6)


def test_decoder_chunks_do_not_change_the_result(punet_export, monkeypatch, blobs, maps_close):
    sampler = OnnxBackend(punet_export, device="cpu")
    img = blobs((40, 52), seed=5)
    whole = sampler.predict(img, k=4, seed=1, tile=None)
    monkeypatch.setattr(backend_module, "CHUNK_BYTES", 4 * 4 * 8 * 52 * 3)  # 3 rows per decoder call
    runs = []
    original = sampler._sessions["decoder"].run
    monkeypatch.setattr(sampler._sessions["decoder"], "run", lambda *a, **k: runs.append(1) or original(*a, **k), raising=False)
    chunked = sampler.predict(img, k=4, seed=1, tile=None)
    assert len(runs) == 14
    maps_close(chunked, whole, atol=1e-5, keys=list(whole))  # decoder inputs of other shapes: a few ulps


def test_per_tile_normalisation_is_an_option(punet_export, blobs):
    sampler = OnnxBackend(punet_export, device="cpu")
    img = np.linspace(0, 1, 96 * 96, dtype=np.float32).reshape(96, 96) + blobs((96, 96))
    a = sampler.predict(img, k=2, seed=0, tile=32, normalize="tile")
    b = sampler.predict(img, k=2, seed=0, tile=32, normalize="image")
    assert a["prob"].shape == b["prob"].shape and not np.allclose(a["prob"], b["prob"])
