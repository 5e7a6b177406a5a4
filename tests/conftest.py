"""Shared fixtures: tiny models, tiny synthetic datasets, a tiny trained checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
from scipy import ndimage
import tifffile
import torch

from probda_deploy.data.synthetic import write_dataset
from probda_deploy.models import build_model
from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

TINY = dict(initial_features=8, depth=3)


@pytest.fixture
def tiny_punet():
    torch.manual_seed(0)
    return build_model("punet-small", **TINY).eval()


@pytest.fixture
def tiny_unet():
    torch.manual_seed(0)
    return build_model("unet-small", **TINY).eval()


@pytest.fixture(scope="session")
def source_data(tmp_path_factory):
    """8 synthetic 64x64 source images with labels: (images_dir, labels_dir)."""
    root = tmp_path_factory.mktemp("source")
    return write_dataset(root, n_images=8, shape=(64, 64), domain="source", seed=1)


@pytest.fixture(scope="session")
def target_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    return write_dataset(root, n_images=6, shape=(64, 64), domain="target", seed=2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A probda checkpoint of an untrained tiny PUNet."""
    torch.manual_seed(0)
    model = build_model("punet-small", **TINY)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(make_checkpoint(model), path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- tiny exported models shared by runtime, exporter and CLI tests (one export per session) --

def shared_export(factory, variant: str):
    """(checkpoint, export folder) of a tiny random model; one export per pytest session.

    The folder lives in the session's base temp dir and goes through the
    export cache, so every test directory that asks for it reuses the first export.
    """
    import torch

    from probda_deploy.exporters import cached_export
    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    ckpt = factory.getbasetemp() / "probda_shared" / f"{variant}.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        model = build_model(variant, initial_features=8, depth=3)
        save_checkpoint(make_checkpoint(model, provenance={"torch_version": str(torch.__version__)}), ckpt)
    return ckpt, cached_export(ckpt, samples=8)[0]


@pytest.fixture(scope="session")
def punet_export(tmp_path_factory):
    return shared_export(tmp_path_factory, "punet-small")[1]


@pytest.fixture(scope="session")
def punet_ckpt(tmp_path_factory):
    return shared_export(tmp_path_factory, "punet-small")[0]


@pytest.fixture(scope="session")
def unet_export(tmp_path_factory):
    return shared_export(tmp_path_factory, "unet-small")[1]


def make_blobs(shape, seed=0) -> np.ndarray:
    """A float32 image with a few bright discs on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(0, 0.2, shape)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 8)
        img += ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(float)
    return img.astype(np.float32)


@pytest.fixture
def blobs():
    return make_blobs


def make_random_map(kind: str, rng: np.random.Generator, shape=(72, 88), sparse: bool = False) -> np.ndarray:
    """A probability map of one hard kind: clumps larger than a block, objects on block corners, plateaus,
    values tied at the threshold, or float noise around it; `sparse`: about a third of the objects."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    if kind in ("clumps", "corners"):
        mask = np.zeros(shape, bool)
        centres = ([(rng.uniform(0, shape[0]), rng.uniform(0, shape[1])) for _ in range(10 if sparse else 30)] if kind == "clumps"
                   else [(y + rng.integers(-1, 2), x + rng.integers(-1, 2)) for y in range(0, shape[0], 48 if sparse else 24) for x in range(0, shape[1], 48 if sparse else 24)])
        for cy, cx in centres:
            r = rng.uniform(3, 11)
            mask |= (yy - cy) ** 2 + ((xx - cx) * rng.uniform(0.6, 1.4)) ** 2 <= r * r
        return np.where(mask, 0.8, 0.2).astype(np.float32)  # plateaus: every distance tie is a real tie
    field = ndimage.gaussian_filter(rng.random(shape), rng.uniform(2, 3) if sparse else rng.uniform(2, 5))
    field = ((field - field.min()) / (np.ptp(field) + 1e-12)) ** (3 if sparse else 2)  # 2: about a fifth above 0.5
    if kind == "plateaus":
        return (np.round(field * 6) / 6).astype(np.float32)  # steps, some exactly at the threshold 0.5
    tie = 0.5 + 1e-7 * rng.uniform(-1, 1, shape)  # float32 rounds these to 0.5 or one step either side of it
    return np.where(field > (0.45 if sparse else 0.3), tie, 0.1).astype(np.float32)  # "noise": blobs speckled by float noise


@pytest.fixture
def random_map():
    return make_random_map


def assert_maps_close(got: dict, want: dict, *, atol: float, keys=("prob", "consensus", "std"), flips: float = 1e-3):
    """Maps of two computations that agree to float precision only (other tile shapes, backends or op order):
    prob and std within `atol`; consensus (and mask) equal except on at most a `flips` fraction of the
    pixels (and 1 pixel), where a sample or the mean lies within float noise of a threshold (0.1, 0.5, 0.9)
    and counts on the other side on this CPU."""
    for key in keys:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.shape == b.shape, key
        if key in ("consensus", "mask"):
            differ = int((a != b).sum())
            assert differ <= max(1, flips * a.size), f"{key}: {differ} of {a.size} pixels differ"
        else:
            np.testing.assert_allclose(a, b, atol=atol, rtol=0, err_msg=key)


@pytest.fixture
def maps_close():
    return assert_maps_close


@pytest.fixture
def write_tif():
    def write(path, array):
        tifffile.imwrite(path, array)
        return path

    return write
