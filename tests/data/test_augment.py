import numpy as np

from probda_deploy.data.augment import STRONG, WEAK, flip_rotate, robust_intensity
from probda_deploy.data.patches import ImageSet, PatchSampler


def test_flip_rotate_keeps_image_label_aligned(rng):
    x = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
    y = (x > 0.5).astype(np.float32)
    xa, ya = flip_rotate(rng, x, y)
    assert np.array_equal(ya, (xa > 0.5).astype(np.float32))


def test_views_are_standardised_and_differ(rng):
    x = rng.normal(size=(8, 1, 32, 32)).astype(np.float32)
    for aug in (WEAK, STRONG, robust_intensity):
        v = aug(rng, x)
        assert v.shape == x.shape and np.allclose(v.mean(axis=(1, 2, 3)), 0, atol=1e-4)
        assert np.allclose(v.std(axis=(1, 2, 3)), 1, atol=1e-3)
    assert not np.allclose(STRONG(rng, x), x)


def test_min_foreground_sampler_rejects_empty_patches(rng):
    img = rng.normal(size=(64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.float32)
    lab[:16, :16] = 1
    data = ImageSet([img], [lab], ["a"])
    _, y = PatchSampler(data, 16, min_foreground=0.5, max_tries=200).sample(rng, 8)
    assert (y.mean(axis=(1, 2, 3)) >= 0.5).all()
    x, _ = PatchSampler(data, 16, normalization="patch").sample(rng, 8)
    assert np.allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-4)  # per-patch standardisation (reference)


def test_patches_use_whole_image_statistics_like_prediction(rng):
    from probda_deploy.method import standardize

    ramp = np.linspace(0, 10, 64, dtype=np.float32)[None].repeat(64, 0) + rng.normal(size=(64, 64)).astype(np.float32)
    data = ImageSet([ramp], None, ["a"])
    whole = standardize(ramp)  # what prediction feeds the network
    x, _ = PatchSampler(data, 16).sample(np.random.default_rng(3), 4)
    r = np.random.default_rng(3)  # replay the sampler's draws: image index, y, x per patch
    for patch in x[:, 0]:
        r.choice(1, p=[1.0])
        y0, x0 = int(r.integers(64 - 16 + 1)), int(r.integers(64 - 16 + 1))
        np.testing.assert_allclose(patch, whole[y0 : y0 + 16, x0 : x0 + 16], atol=1e-5)


def test_shading_is_a_planar_multiplicative_ramp_above_the_minimum(rng):
    from probda_deploy.data.augment import VIEW_AUGMENTS as VIEWS, _shading

    x = rng.uniform(1, 2, size=(1, 24, 32)).astype(np.float32)
    x[0, 0, 0] = 0.5  # the patch minimum stays put
    assert np.allclose(_shading(rng, x, 0.0), x)
    a = np.log(3)
    out = _shading(np.random.default_rng(1), x, a)
    log_gain = np.log((out - 0.5)[0] / (x - 0.5)[0])[1:, 1:]  # the minimum pixel has no gain to measure
    yy, xx = np.mgrid[1:24, 1:32]
    A = np.stack([yy.ravel(), xx.ravel(), np.ones(yy.size)], 1)
    coef, res, *_ = np.linalg.lstsq(A, log_gain.ravel(), rcond=None)
    assert np.abs(A @ coef - log_gain.ravel()).max() < 1e-4  # a plane: one illumination ramp
    assert 0.5 * a < np.ptp(log_gain) <= 2 * a + 1e-6  # the gain spans at most exp(-a) .. exp(a)
    assert out[0, 0, 0] == x[0, 0, 0]
    # a multiplicative field survives re-standardisation, unlike an affine contrast change
    batch = rng.normal(size=(8, 1, 32, 32)).astype(np.float32)
    assert not np.allclose(VIEWS["noise-shading"](np.random.default_rng(2), batch), VIEWS["noise"](np.random.default_rng(2), batch))


def test_background_adds_a_smooth_nonnegative_field_of_bounded_amplitude(rng):
    from probda_deploy.data.augment import _background

    x = rng.normal(size=(1, 128, 160)).astype(np.float32)
    assert np.allclose(_background(rng, x, 0.0, 32), x)
    field = (_background(np.random.default_rng(4), x, 2.0, 32) - x)[0]
    assert field.min() >= -1e-5 and np.isclose(field.max(), 2.0 * x.std(), rtol=1e-4)
    assert np.ptp(field) > 1.0  # it varies over the patch (not a constant offset)...
    # ...slowly: neighbouring pixels differ by a small fraction of the field's range (no new edges)
    assert np.abs(np.diff(field, axis=1)).max() < 0.15 * np.ptp(field)
    assert np.abs(np.diff(field, axis=0)).max() < 0.15 * np.ptp(field)
