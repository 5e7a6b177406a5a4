"""One engine, two backends: a checkpoint on torch and its export on onnxruntime give the same maps, and so does
every caller (Python API, `probda segment`, `probda evaluate`) for the same model, seed and file name."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from probda_deploy.backends import load_backend
from probda_deploy.evaluation import load_predictor
from probda_deploy.method import latent_eps, reduce_samples, standardize
from probda_deploy.models.backend import TorchBackend
from probda_deploy.models.checkpoint import model_from_checkpoint
from probda_deploy.runtime import OnnxBackend, segment
from probda_deploy.runtime.backend import Backend

ATOL = 1e-4  # torch and onnxruntime kernels sum in other orders


@pytest.fixture
def image(blobs):
    return blobs((150, 170), seed=3) * 3 + 1


def test_factory_picks_the_backend_of_what_it_is_given(punet_ckpt, punet_export):
    assert isinstance(load_backend(punet_ckpt), TorchBackend)
    assert isinstance(load_backend(punet_export), OnnxBackend)
    assert isinstance(load_backend(model_from_checkpoint(punet_ckpt)), TorchBackend)
    for backend in (load_backend(punet_ckpt), load_backend(punet_export)):
        assert isinstance(backend, Backend) and backend.kind == "punet"
    with pytest.raises(TypeError):  # the interface's operations are abstract
        Backend({"kind": "punet", "size_multiple": 4, "consensus": {}, "normalization": {}}, None)


@pytest.mark.parametrize("tile", [None, 64], ids=["whole", "tiled"])
def test_torch_and_onnxruntime_backends_agree(punet_ckpt, punet_export, image, tile, maps_close):
    eps = latent_eps(0, "img.tif", 8, 6)
    a = load_backend(punet_ckpt).predict(image, eps=eps, tile=tile)
    b = load_backend(punet_export).predict(image, eps=eps, tile=tile)
    maps_close(a, b, atol=ATOL)


def test_torch_backend_equals_the_models_own_sampling(punet_ckpt, image, maps_close):
    model = model_from_checkpoint(punet_ckpt)
    eps = latent_eps(2, "x.tif", 8, model.config.latent_dim)
    got = load_backend(model).predict(image, eps=eps, tile=None)
    x = torch.from_numpy(standardize(image))[None, None]
    with torch.no_grad():
        probs = torch.sigmoid(model.sample_logits(x, eps=torch.from_numpy(eps)[:, None]))[:, 0, 0].numpy()
    maps_close(got, reduce_samples(probs), atol=1e-5)


def test_every_caller_gives_the_same_maps(punet_ckpt, punet_export, image, tmp_path, maps_close):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "cell.tif", image)
    segment(OnnxBackend(punet_export), [folder], tmp_path / "seg", samples=8, seed=4, outputs="prob,consensus,std")
    segmented = {k: tifffile.imread(tmp_path / "seg" / f"cell_{k}.tif") for k in ("prob", "consensus", "std")}
    api = OnnxBackend(punet_export).predict(image, k=8, seed=4, name="cell.tif")
    for key in segmented:  # the same backend: the same numbers
        np.testing.assert_array_equal(segmented[key], api[key], err_msg=key)
    for model in (punet_ckpt, punet_export):  # `probda evaluate` of the checkpoint (torch) and of the export
        predict, _ = load_predictor(model, samples=8, seed=4, device="cpu")
        maps_close(predict(image, "cell.tif"), api, atol=ATOL)
    maps_close(load_backend(punet_ckpt).predict(image, k=8, seed=4, name="cell.tif"), api, atol=ATOL)
