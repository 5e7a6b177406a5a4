"""Shared fixtures: tiny models, tiny synthetic datasets, a tiny trained checkpoint."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np
import pytest
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
