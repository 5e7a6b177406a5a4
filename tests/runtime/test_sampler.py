"""Runtime sampler: seeds, latent draws, providers, option errors."""

from __future__ import annotations

import numpy as np
import pytest

from probda_deploy.errors import ConfigError
from probda_deploy.runtime import OnnxBackend, latent_eps
from probda_deploy.runtime.session import requested_providers


def test_latent_eps_is_stable_and_order_free():
    a = latent_eps(0, "dir/img_01.tif", 16, 6)
    assert a.shape == (16, 6) and a.dtype == np.float32
    np.testing.assert_array_equal(a, latent_eps(0, "/other/place/img_01.tif", 16, 6))
    np.testing.assert_array_equal(a[:4], latent_eps(0, "img_01.tif", 4, 6))
    assert not np.allclose(a, latent_eps(1, "img_01.tif", 16, 6))
    assert not np.allclose(a, latent_eps(0, "img_02.tif", 16, 6))
    assert not np.allclose(a, latent_eps(0, "img_01.tif", 16, 6, slice_index=1))
    # pinned values: changing the derivation changes every user's results
    np.testing.assert_allclose(latent_eps(0, "x.tif", 1, 2)[0], [0.6465934, -0.0293531], rtol=1e-6)


def test_predict_is_reproducible_and_k_matters(punet_export, blobs):
    sampler = OnnxBackend(punet_export, device="cpu", threads=1)
    img = blobs((33, 47))
    a = sampler.predict(img, k=5, seed=3)
    np.testing.assert_array_equal(a["prob"], sampler.predict(img, k=5, seed=3)["prob"])
    assert not np.array_equal(a["prob"], sampler.predict(img, k=5, seed=4)["prob"])
    assert set(np.unique(a["consensus"] * 5).round(4)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert sampler.predict(img, k=3, seed=0, return_samples=True)["samples"].shape == (3, 33, 47)
    assert {k: v.dtype for k, v in a.items()} == {"prob": np.float32, "consensus": np.float32, "std": np.float32}


def test_cpu_provider_is_read_back(punet_export):
    sampler = OnnxBackend(punet_export, device="cpu")
    assert sampler.providers == ["CPUExecutionProvider"]
    assert sampler.provider_report.note == ""


def test_cuda_request_is_reported_when_not_active(punet_export):
    sampler = OnnxBackend(punet_export, device="cuda")
    if "CUDAExecutionProvider" in sampler.providers:
        pytest.skip("CUDA is active on this machine")
    assert sampler.providers == ["CPUExecutionProvider"]
    assert "CUDA was requested but onnxruntime could not activate CUDAExecutionProvider" in sampler.provider_report.note


def test_option_errors(punet_export, blobs):
    sampler = OnnxBackend(punet_export, device="cpu")
    img = blobs((16, 16))
    with pytest.raises(ConfigError, match=r"eps shape \(3, 2\): expected \(K, 6\)"):
        sampler.predict(img, eps=np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="need at least 1 sample"):
        sampler.predict(img, k=0)
    with pytest.raises(ConfigError, match="--normalize 'zscore': unknown"):
        sampler.predict(img, normalize="zscore")
    with pytest.raises(ConfigError, match="one 2D image"):
        sampler.predict(np.zeros((2, 16, 16), np.float32))
    with pytest.raises(ConfigError, match="--device 'tpu': unknown; choose one of auto, cpu, cuda"):
        requested_providers("tpu")
