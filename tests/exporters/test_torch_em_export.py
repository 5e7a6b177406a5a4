"""Imported torch-em and reference-code PUNets: ONNX export, segmentation, tiling guarantees, zoo packaging.

Two groups:
- probda's own re-implementation of the torch-em layout (`TorchEmPUNet`), always run:
  export with dynamic H/W, the tiling guarantee per norm (exact for local norms,
  whole image for InstanceNorm/GroupNorm), the minimum size, the exporter's errors.
- torch-em's real `ProbabilisticUNet` (torch-em 0.10.9): every supported norm is
  imported, exported, segmented (equal to torch-em's forward + sample() for the
  same z) and packaged. torch-em is not a probda dependency: these run when
  `torch_em` is importable or PROBDA_TORCH_EM_VENV names a venv that has it
  (.ci/torch_em_crosscheck.sh creates one and runs the same path in CI).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.errors import ConfigError, ExportError
from probda_deploy.exporters.onnx import _export, export_onnx, innermost_cause
from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint
from probda_deploy.models.importer import import_checkpoint
from probda_deploy.models.punet import PUNet, PUNetConfig
from probda_deploy.models.torch_em_unet import TorchEmPUNet, TorchEmPUNetConfig
from probda_deploy.runtime import OnnxBackend

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-4


def _crosscheck_module():
    """.ci/torch_em_crosscheck.py: the torch-em loader and fixtures the CI cross-check uses."""
    spec = importlib.util.spec_from_file_location("torch_em_crosscheck", REPO / ".ci" / "torch_em_crosscheck.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _crosscheck_module().perturb(model)


def _export_probda(model, tmp: Path, name: str) -> Path:
    ckpt = save_checkpoint(make_checkpoint(model), tmp / f"{name}.pt")
    return export_onnx(ckpt, tmp / f"{name}.probda")


def _torch_probs(model, image: np.ndarray, eps: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits = model.sample_logits(torch.from_numpy(image)[None, None], eps=torch.from_numpy(eps)[:, None])
    return torch.sigmoid(logits)[:, 0, 0].numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Tiny torch-em-layout PUNets (depth 2) exported once: {norm: (model, export folder)}."""
    tmp = tmp_path_factory.mktemp("te-export")
    out = {}
    for i, norm in enumerate(["InstanceNorm", "BatchNorm"]):
        torch.manual_seed(i)
        model = _perturbed(TorchEmPUNet(TorchEmPUNetConfig(num_filters=(4, 8), latent_dim=3, n_fcomb=3, norm=norm)), i)
        out[norm] = (model, _export_probda(model, tmp, norm))
    return out


@pytest.mark.parametrize("norm", ["InstanceNorm", "BatchNorm"])
def test_export_keeps_dynamic_sizes_and_equals_torch(exported, norm):
    model, folder = exported[norm]
    sampler = OnnxBackend(folder, device="cpu")
    rng = np.random.default_rng(0)
    for h, w in [(24, 24), (37, 61), (96, 80)]:  # the minimum, odd sizes (padded), larger than traced
        image = rng.standard_normal((h, w)).astype(np.float32)
        eps = rng.standard_normal((4, 3)).astype(np.float32)
        got = sampler.predict(image, eps=eps, normalize="none", tile=None, return_samples=True)
        np.testing.assert_allclose(got["samples"], _torch_probs(model, image, eps), atol=TOL, rtol=0)


def test_instance_norm_is_precise_at_large_sizes():
    """The exported norms keep torch's float32 precision on a 512 x 512 image (onnxruntime's one-shot
    InstanceNormalization lost 6e-3 there)."""
    from probda_deploy.exporters.graphs import EncoderGraph

    torch.manual_seed(0)
    model = _perturbed(TorchEmPUNet(TorchEmPUNetConfig(num_filters=(8, 16), latent_dim=3, norm="InstanceNorm")), 0)
    import onnxruntime as ort
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "enc.onnx"
        dims = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
        _export(EncoderGraph(model), (torch.randn(2, 1, 32, 36),), ({0: dims[0], 2: dims[1], 3: dims[2]},),
                ["image"], ["features"], path, 20)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": np.random.default_rng(1).standard_normal((1, 1, 512, 512)).astype(np.float32)})[0]
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 1, 512, 512)).astype(np.float32))
    with torch.no_grad():
        ref = model.double().unet(x.double()).numpy()
    assert np.abs(got - ref).max() < 2e-4


def test_local_norm_tiles_exactly(exported):
    model, folder = exported["BatchNorm"]
    sampler = OnnxBackend(folder, device="cpu")
    assert sampler.tiling_mode == "exact" and sampler.tiling_note == ""
    rng = np.random.default_rng(3)
    image = rng.standard_normal((150, 131)).astype(np.float32)
    eps = rng.standard_normal((3, 3)).astype(np.float32)
    whole = sampler.predict(image, eps=eps, tile=None)
    tiled = sampler.predict(image, eps=eps, tile=32)
    assert len(sampler.plan(image.shape, tile=32)) == 25
    for key in ("prob", "std"):  # windows of other shapes: float precision, not bits
        np.testing.assert_allclose(tiled[key], whole[key], atol=1e-4, rtol=0)


def test_instance_norm_model_runs_on_whole_images_only(exported, tmp_path):
    _, folder = exported["InstanceNorm"]
    sampler = OnnxBackend(folder, device="cpu")
    assert sampler.tiling_mode == "whole-image"
    assert len(sampler.plan((4000, 3000), tile="auto")) == 1  # auto never tiles it, even above 1536 px
    with pytest.raises(ConfigError, match=r"--tile 64: this model runs on whole images only \(torch-em InstanceNorm"):
        sampler.plan((300, 300), tile=64)
    with pytest.raises(ConfigError, match=r"image 20x30 is smaller than this model's minimum 24x24"):
        sampler.predict(np.zeros((20, 30), np.float32))
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", np.random.default_rng(0).standard_normal((40, 48)).astype(np.float32))
    res = CliRunner().invoke(app, ["segment", str(folder), "-i", str(tmp_path / "a.tif"), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert "whole images only, never tiled" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["segment", str(folder), "-i", str(tmp_path / "a.tif"), "-o", str(tmp_path / "p"), "--tile", "32", "-q"])
    assert res.exit_code == 1 and "a.tif: --tile 32: this model runs on whole images only" in " ".join(res.output.split())


def test_reference_layout_tiling_is_approximate_with_a_measured_error(tmp_path):
    """Reference-code checkpoints import as PUNet(align_corners=True): tiles are close, not exact."""
    torch.manual_seed(0)
    model = PUNet(PUNetConfig(depth=3, initial_features=8, latent_dim=3, align_corners=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = _export_probda(model, tmp_path, "ref")
    sampler = OnnxBackend(folder, device="cpu")
    assert sampler.tiling_mode == "approximate" and "align_corners=True" in sampler.tiling_note
    assert len(sampler.plan((4000, 3000), tile="auto")) == 1  # never tiled unless asked
    rng = np.random.default_rng(0)
    image = rng.standard_normal((256, 256)).astype(np.float32)
    eps = rng.standard_normal((8, 3)).astype(np.float32)
    whole = sampler.predict(image, eps=eps, tile=None)
    tiled = sampler.predict(image, eps=eps, tile=64)
    err = float(np.abs(tiled["prob"] - whole["prob"]).max())
    assert 0.01 < err < 0.13  # measured 0.07 (mean 0.006); README "Import a checkpoint" states it


def test_exporter_error_names_the_innermost_cause(tmp_path):
    class Broken(torch.nn.Module):
        def forward(self, image):
            raise ValueError("the real reason\nsecond line")

    try:
        try:
            raise KeyError("inner")
        except KeyError as e:
            raise RuntimeError("wrapper with a generic guide") from e
    except RuntimeError as e:
        assert innermost_cause(e) == "KeyError: 'inner'"
    with pytest.raises(ExportError) as info:
        _export(Broken(), (torch.zeros(1, 1, 8, 8),), None, ["image"], ["out"], tmp_path / "b.onnx", 20)
    msg = str(info.value)
    assert msg.startswith("b.onnx: ONNX export failed: ValueError: the real reason;") and "\n" not in msg
    assert "--opset" in msg and "probda info" in msg


# ---- torch-em's own code ------------------------------------------------------------------


def _torch_em_class():
    """torch-em's ProbabilisticUNet, or None when torch-em is not available."""
    if importlib.util.find_spec("torch_em") is None:
        venv = os.environ.get("PROBDA_TORCH_EM_VENV")
        sites = sorted(Path(venv).glob("lib/python*/site-packages")) if venv else []
        if not sites or not (sites[0] / "torch_em").is_dir():
            return None
        sys.path.append(str(sites[0]))  # after probda's own packages: torch-em's pure-python code only
    cls, _ = _crosscheck_module()._import_torch_em()
    return cls


TORCH_EM = _torch_em_class()
needs_torch_em = pytest.mark.skipif(
    TORCH_EM is None,
    reason="torch-em is not installed (not a probda dependency): set PROBDA_TORCH_EM_VENV to the venv "
    ".ci/torch_em_crosscheck.sh creates, which also runs this path in CI",
)
NORMS = [None, "InstanceNorm", "InstanceNormTrackStats", "GroupNorm", "BatchNorm"]


def _torch_em_sample_probs(model, image: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """torch-em's forward() + sample(), sample() drawing z = mu + sigma * eps_k: (K, H, W)."""
    with torch.no_grad():
        model(torch.from_numpy(image)[None, None])
        dist = model.prior_latent_space
        probs = []
        for e in torch.from_numpy(eps):
            z = dist.base_dist.loc + dist.base_dist.scale * e[None]
            dist.sample = lambda sample_shape=torch.Size(), z=z: z
            probs.append(torch.sigmoid(model.sample())[0, 0])
    return torch.stack(probs).numpy()


@needs_torch_em
@pytest.mark.parametrize("norm", NORMS)
def test_torch_em_model_exports_and_segments_like_torch_em(norm, tmp_path):
    xc = _crosscheck_module()
    depth3 = norm is None
    kwargs = {"num_filters": [4, 8, 8] if depth3 else [4, 8], "latent_dim": 3, "norm": norm}
    student, teacher = xc._build(TORCH_EM, kwargs, seed=1), xc._build(TORCH_EM, kwargs, seed=2)
    src = tmp_path / "te.pt"
    torch.save(xc._trainer_style_checkpoint(student, teacher, TORCH_EM, kwargs), src)
    rng = np.random.default_rng(0)
    image = rng.standard_normal((48, 56) if depth3 else (32, 40)).astype(np.float32)
    eps = rng.standard_normal((4, 3)).astype(np.float32)
    for use_teacher, ref_model in ((True, teacher), (False, student)):
        result = import_checkpoint(src, teacher=use_teacher)
        ckpt = save_checkpoint(result.checkpoint, tmp_path / f"te-{use_teacher}.pt")
        folder = export_onnx(ckpt, tmp_path / f"te-{use_teacher}.probda")
        got = OnnxBackend(folder, device="cpu").predict(image, eps=eps, normalize="none", tile=None, return_samples=True)
        np.testing.assert_allclose(got["samples"], _torch_em_sample_probs(ref_model, image, eps), atol=TOL, rtol=0)


@needs_torch_em
@pytest.mark.parametrize("norm", ["InstanceNorm", "BatchNorm"])
def test_torch_em_model_packages_for_the_zoo(norm, tmp_path):
    from probda_deploy.model_zoo import export_bioimageio

    xc = _crosscheck_module()
    kwargs = {"num_filters": [4, 8], "latent_dim": 3, "norm": norm}
    src = tmp_path / "te.pt"
    torch.save(xc._trainer_style_checkpoint(xc._build(TORCH_EM, kwargs, seed=3), None, TORCH_EM, kwargs), src)
    ckpt = save_checkpoint(import_checkpoint(src).checkpoint, tmp_path / "te_probda.pt")
    report = export_bioimageio(ckpt, tmp_path / "te.zip")
    assert report.path.is_file() and report.summary.status == "passed"
