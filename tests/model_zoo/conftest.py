"""Shared fixtures: a tiny PUNet briefly trained on a synthetic image, and its zoo package (exported once)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from probda_deploy.data.io import write_tiff_atomic
from probda_deploy.method import standardize
from probda_deploy.data.synthetic import make_nuclei
from probda_deploy.models import build_model
from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

SIZE = 64


def fitted_tiny_punet(seed: int = 0, *, boundaries: bool = False):
    """punet-small (8 features, depth 3) whose last fcomb layer is fitted in closed form to one synthetic image.

    A ridge regression of logit targets (+-6 for fore-/background; with `boundaries` also for the
    object boundaries of `probda train --boundaries`) on the fcomb features at z = mu: a model with
    confident, image-dependent outputs in well under a second (a few Adam steps take ~1 min on 2 shared cores).
    """
    from probda_deploy.data.patches import boundary_targets

    torch.manual_seed(seed)
    image, labels = make_nuclei(np.random.default_rng(seed), (SIZE, SIZE))
    model = build_model("punet-small", initial_features=8, depth=3, num_classes=2 if boundaries else 1).eval()
    x = torch.from_numpy(standardize(image.astype(np.float32)))[None, None]
    goal = boundary_targets(labels) if boundaries else (labels > 0)[None]
    target = torch.from_numpy(np.where(goal > 0, 6.0, -6.0).astype(np.float32)).flatten(1).T  # (HW, classes)
    with torch.no_grad():
        feats = model.features(x)
        mu, _ = model.prior_params(x)
        zmap = mu[:, :, None, None].expand(-1, -1, SIZE, SIZE)
        h = model.fcomb.layers(torch.cat([feats, zmap], dim=1))[0].flatten(1).T  # (HW, C)
        a = torch.cat([h, torch.ones(h.shape[0], 1)], dim=1)
        sol = torch.linalg.solve(a.T @ a + 1e-3 * torch.eye(a.shape[1]), a.T @ target)
        model.fcomb.last_layer.weight.copy_(sol[:-1].T.reshape(goal.shape[0], -1, 1, 1))
        model.fcomb.last_layer.bias.copy_(sol[-1])
    return model, image


@pytest.fixture(scope="session")
def zoo_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def tiny_checkpoint(zoo_workdir) -> Path:
    model, _ = fitted_tiny_punet()
    # str(): make_checkpoint stores torch.__version__ (a TorchVersion) which weights_only loading refuses
    ckpt = make_checkpoint(model, iteration=40, metrics={"val_dice": 0.5},
                           provenance={"probda_version": "test", "torch_version": str(torch.__version__)},
                           train_config={"strategy": "source", "note": "last layer fitted in closed form"})
    return save_checkpoint(ckpt, zoo_workdir / "run" / "best.pt")


@pytest.fixture(scope="session")
def test_image(zoo_workdir) -> Path:
    image, _ = make_nuclei(np.random.default_rng(1), (72, 80))
    return write_tiff_atomic(zoo_workdir / "nuclei.tif", image)


@pytest.fixture(scope="session")
def zoo_package(tiny_checkpoint, test_image, zoo_workdir):
    """(report, checkpoint, test image) of one export shared by the tests."""
    from probda_deploy.model_zoo.package import export_bioimageio

    report = export_bioimageio(tiny_checkpoint, zoo_workdir / "out" / "tiny.zip", name="probda tiny PUNet",
                               authors=["Test Author;probda tests"], test_image=test_image, samples=8, seed=3)
    return report
