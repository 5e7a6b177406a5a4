"""ONNX export: folder layout, manifest, parity with PyTorch, dynamic shapes, errors."""

from __future__ import annotations

import gc
import json
import os
import shutil
import weakref

import numpy as np
import onnx
import pytest
import torch

from probda_deploy.errors import ConfigError, ExportError
from probda_deploy.exporters import cached_export, export_onnx
from probda_deploy.models.blocks import receptive_radius
from probda_deploy.models import build_model
from probda_deploy.models.checkpoint import model_from_checkpoint
from probda_deploy.runtime.manifest import sha256_file
from probda_deploy.runtime import OnnxBackend, BackendRef, load_manifest, reduce_samples
from probda_deploy.runtime.onnx_backend import clear_backends, open_backend


def _torch_maps(model, x: np.ndarray, eps: np.ndarray) -> dict[str, np.ndarray]:
    """PyTorch reference: K sigmoid prior samples of (B, H, W) images -> (B, H, W) maps."""
    with torch.no_grad():
        logits = model.sample_logits(torch.from_numpy(x)[:, None], eps=torch.from_numpy(eps))
    probs = torch.sigmoid(logits)[:, :, 0].numpy()  # (K, B, H, W)
    return reduce_samples(probs)


def test_export_folder_and_manifest(punet_export, punet_ckpt):
    names = sorted(p.name for p in punet_export.iterdir())
    assert names == ["decoder.onnx", "encoder.onnx", "manifest.json", "prior.onnx", "prior_head.onnx"]
    m = load_manifest(punet_export)
    assert m["format"] == "probda-onnx" and m["format_version"] == 1 and m["kind"] == "punet"
    assert m["opset"] == 20 and m["latent_dim"] == 6 and m["default_samples"] == 8
    assert m["consensus"] == {"rule": "agree", "threshold_high": 0.9, "threshold_low": 0.1, "class_threshold": 0.5}
    assert m["normalization"]["mode"] == "zero_mean_unit_variance"
    assert m["size_multiple"] == 4 and m["default_halo"] % 4 == 0
    assert m["provenance"]["checkpoint_sha256"] == sha256_file(punet_ckpt)
    for name, digest in m["files"].items():
        assert sha256_file(punet_export / name) == digest
    assert m["graphs"]["decoder"]["dynamic_axes"]["z"] == {"0": "samples", "1": "batch"}
    enc = onnx.load(str(punet_export / "encoder.onnx"))
    assert max(o.version for o in enc.opset_import if o.domain in ("", "ai.onnx")) == 20
    dims = [d.dim_param or d.dim_value for d in enc.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 1 and isinstance(dims[2], str) and isinstance(dims[3], str)
    assert not list(punet_export.glob("*.data")), "graphs must be self-contained (external_data=False)"


def test_parity_with_torch_batch2_odd_sizes(punet_export, punet_ckpt, maps_close):
    model = model_from_checkpoint(punet_ckpt)
    sampler = OnnxBackend(punet_export, device="cpu")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 37, 45)).astype(np.float32)
    eps = rng.standard_normal((5, 2, 6)).astype(np.float32)
    maps = [sampler.predict(x[b], eps=eps[:, b], tile=None, normalize="none") for b in range(2)]
    got = {key: np.stack([m[key] for m in maps]) for key in ("prob", "consensus", "std")}
    ref = _torch_maps(model, x, eps)
    assert got["prob"].shape == (2, 37, 45)
    maps_close(got, ref, atol=1e-4)  # onnxruntime against torch: float precision, not bits
    assert ref["std"].max() > 1e-3, "samples must differ for the std test to mean anything"


def test_three_sizes_in_one_session(punet_export, punet_ckpt):
    model = model_from_checkpoint(punet_ckpt)
    sampler = OnnxBackend(punet_export, device="cpu")
    rng = np.random.default_rng(4)
    for shape in [(16, 16), (23, 61), (64, 30)]:
        x = rng.standard_normal((1, *shape)).astype(np.float32)
        eps = rng.standard_normal((3, 1, 6)).astype(np.float32)
        got = sampler.predict(x[0], eps=eps[:, 0], tile=None, normalize="none")
        np.testing.assert_allclose(got["prob"][None], _torch_maps(model, x, eps)["prob"], atol=1e-4)


def test_one_sampler_per_process_and_export(punet_export, tmp_path):
    folder = tmp_path / "copy.probda"
    shutil.copytree(punet_export, folder)
    ref = BackendRef(str(folder), "cpu", 1)  # what each Dask worker opens
    first = ref.open()
    assert ref.open() is first and open_backend(folder, device="cpu", threads=1) is first
    assert open_backend(folder, device="cpu", threads=2) is not first
    manifest = folder / "manifest.json"  # a re-export in the same process is loaded afresh
    os.utime(manifest, ns=(manifest.stat().st_atime_ns, manifest.stat().st_mtime_ns + 10**9))
    stale = weakref.ref(first)
    del first
    second = ref.open()
    assert ref.open() is second and stale() is not second
    gc.collect()
    assert stale() is None  # the earlier export's sampler (and its sessions) is released
    clear_backends(folder)
    assert ref.open() is not second
    clear_backends(folder)


def test_sample_maps_and_whole_image_standardisation(punet_export, punet_ckpt):
    model = model_from_checkpoint(punet_ckpt)
    sampler = OnnxBackend(punet_export, device="cpu")
    img = np.random.default_rng(5).uniform(0, 4000, (29, 34)).astype(np.float32)
    eps = np.random.default_rng(6).standard_normal((4, 6)).astype(np.float32)
    got = sampler.predict(img, eps=eps, return_samples=True)
    x = ((img - img.mean()) / (img.std() + 1e-7))[None].astype(np.float32)
    with torch.no_grad():
        probs = torch.sigmoid(model.sample_logits(torch.from_numpy(x)[:, None], eps=torch.from_numpy(eps[:, None])))
    np.testing.assert_allclose(got["samples"], probs[:, 0, 0].numpy(), atol=1e-4)
    np.testing.assert_allclose(got["prob"], probs.mean(0)[0, 0].numpy(), atol=1e-4)


def test_unet_exports_as_one_graph(unet_export):
    m = load_manifest(unet_export)
    assert m["kind"] == "unet" and list(m["graphs"]) == ["model"]
    assert sorted(p.name for p in unet_export.iterdir()) == ["manifest.json", "model.onnx"]
    ckpt = m["provenance"]["checkpoint"]
    model = model_from_checkpoint(ckpt)
    img = np.random.default_rng(7).standard_normal((21, 30)).astype(np.float32)
    got = OnnxBackend(unet_export, device="cpu").predict(img, normalize="none")
    with torch.no_grad():
        ref = torch.sigmoid(model(torch.from_numpy(img)[None, None]))[0, 0].numpy()
    np.testing.assert_allclose(got["prob"], ref, atol=1e-4)
    assert np.all(got["std"] == 0)
    prob = got["prob"]  # the consensus is computed from the runtime's own prob, bit for bit
    np.testing.assert_array_equal(got["consensus"], np.where(prob >= 0.5, prob >= 0.9, prob <= 0.1).astype(np.float32))


def test_cached_export_is_reused(punet_ckpt, punet_export):
    folder, reused = cached_export(punet_ckpt)
    assert reused and folder == punet_export


def test_export_refuses_existing_folder_and_bad_options(tmp_path, punet_ckpt):
    (tmp_path / "m.probda").mkdir()
    with pytest.raises(ExportError, match="already exists; pass --overwrite"):
        export_onnx(punet_ckpt, tmp_path / "m.probda")
    with pytest.raises(ConfigError, match="--consensus-rule 'vote': unknown; choose one of agree, confident"):
        export_onnx(punet_ckpt, tmp_path / "n.probda", consensus_rule="vote")
    with pytest.raises(ConfigError, match="need 0 <= low < 0.5 < high"):
        export_onnx(punet_ckpt, tmp_path / "n.probda", thresholds=(0.4, 0.1))
    three_class = build_model("punet-small", initial_features=8, depth=3, num_classes=3)  # 2 = foreground + boundary
    with pytest.raises(ExportError, match="3 class.*a foreground output \\(and a boundary output\\)"):
        export_onnx(three_class, tmp_path / "n.probda")
    assert not (tmp_path / "n.probda").exists()


def test_receptive_radius_bounds_the_real_field():
    """The analytic radius must cover the measured receptive field of the UNet trunk."""
    torch.manual_seed(0)
    model = build_model("punet-small", initial_features=4, depth=3).eval()
    x = torch.randn(1, 1, 96, 96, requires_grad=True)
    model.features(x)[0, :, 48, 48].sum().backward()
    ys, xs = np.nonzero(x.grad[0, 0].abs().numpy() > 0)
    measured = max(48 - ys.min(), ys.max() - 48, 48 - xs.min(), xs.max() - 48)
    unet_r, prior_r = receptive_radius(3, 3)
    assert measured <= unet_r and prior_r < unet_r
    manifest_halo = -(-unet_r // 4) * 4
    assert manifest_halo >= measured
    assert json.dumps(receptive_radius(4, 3)) == "[87, 52]"
