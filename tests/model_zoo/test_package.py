"""Export of a tiny PUNet to a bioimage.io package, checked by bioimageio.core and its CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from probda_deploy.data.io import read_image, write_tiff_atomic
from probda_deploy.method import standardize
from probda_deploy.errors import ExportError, ZooValidationError
from probda_deploy.model_zoo.validate import safe_extract

BIOIMAGEIO = Path(sys.executable).with_name("bioimageio")


def _rdf(report, tmp_path) -> tuple[dict, Path]:
    root = safe_extract(report.path, tmp_path / "pkg")
    return yaml.safe_load((root / "rdf.yaml").read_text()), root


def test_export_passes_test_model_for_both_formats(zoo_package, tmp_path):
    report = zoo_package
    assert report.path.is_file() and report.path.suffix == ".zip"
    assert report.summary.passed
    assert report.formats == {"onnx": "passed", "torchscript": "passed"}
    assert not [p for p in report.path.parent.iterdir() if p.name.startswith(".")]  # no temp files left
    rdf, root = _rdf(report, tmp_path)
    assert rdf["format_version"].startswith("0.5")
    assert [o["id"] for o in rdf["outputs"]] == ["prob", "consensus", "std"]
    assert rdf["weights"]["onnx"]["parent"] == "torchscript" and "parent" not in rdf["weights"]["torchscript"]
    assert rdf["inputs"][0]["axes"][2]["size"] == {"min": 36, "step": 4}
    assert all(o["axes"][2]["halo"] == 16 for o in rdf["outputs"])
    probda = rdf["config"]["probda"]
    assert probda["sampling"]["samples"] == 8 and probda["sampling"]["seed"] == 3
    assert np.array(probda["sampling"]["eps"]).shape == (8, 6)
    assert probda["consensus"] == {"rule": "agree", "threshold_high": 0.9, "threshold_low": 0.1, "class_threshold": 0.5}
    assert probda["checkpoint"]["iteration"] == 40 and len(probda["checkpoint"]["sha256"]) == 64
    tols = {t["output_ids"][0]: t for t in rdf["config"]["bioimageio"]["reproducibility_tolerance"]}
    assert tols["consensus"]["mismatched_elements_per_million"] == 1000 and tols["prob"]["absolute_tolerance"] == 1e-4
    assert "## Validation" in (root / "README.md").read_text()
    assert (root / "cover.png").read_bytes()[:4] == b"\x89PNG"
    assert rdf["authors"] == [{"name": "Test Author", "affiliation": "probda tests"}]
    test_in = np.load(root / "test_input.npy")
    assert test_in.shape == (1, 1, 72, 80)  # the given --test-image, already a valid size
    assert (np.load(root / "test_output_prob.npy") >= 0.5).any()  # foreground in the test outputs


def _sample_logits_mean(ckpt_path: Path, image: np.ndarray, eps: np.ndarray) -> np.ndarray:
    from probda_deploy.models.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(ckpt_path)
    x = torch.from_numpy(standardize(image, eps=1e-7))[None, None]
    with torch.no_grad():
        logits = model.sample_logits(x, eps=torch.from_numpy(eps)[:, None, :])
    return torch.sigmoid(logits).mean(0)[0, 0].numpy()


def test_zoo_mean_equals_punet_sample_logits(zoo_package, tiny_checkpoint, tmp_path):
    import onnxruntime as ort

    rdf, root = _rdf(zoo_package, tmp_path)
    eps = np.asarray(rdf["config"]["probda"]["sampling"]["eps"], np.float32)
    image = np.load(root / "test_input.npy")[0, 0]
    expected = _sample_logits_mean(tiny_checkpoint, image, eps)
    stored = np.load(root / "test_output_prob.npy")[0, 0]
    sess = ort.InferenceSession(str(root / "weights.onnx"), providers=["CPUExecutionProvider"])
    x = standardize(image, eps=1e-7)[None, None]
    onnx_prob = sess.run(None, {sess.get_inputs()[0].name: x})[0][0, 0]
    ts_prob = torch.jit.load(str(root / "weights_torchscript.pt"))(torch.from_numpy(x))[0][0, 0].detach().numpy()
    for got in (stored, onnx_prob, ts_prob):
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_bioimageio_cli_test_and_predict(zoo_package, test_image, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([str(BIOIMAGEIO), "test", str(zoo_package.path)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # bioimageio.core 0.11.0 + pydantic-settings 2.16 parse a single --outputs pattern as a 1-tuple, so the
    # per-output patterns are given explicitly (README_bioimageio.md shows both forms).
    outputs = json.dumps([f"out/{k}/{{sample_id}}.tif" for k in ("prob", "consensus", "std")])
    res = subprocess.run([str(BIOIMAGEIO), "predict", str(zoo_package.path), "--inputs", str(test_image),
                          "--outputs", outputs, "--weight-format", "onnx"], capture_output=True, text=True, env=env,
                         timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for key in ("prob", "consensus", "std"):
        written = list((tmp_path / "out" / key).glob("*.tif"))
        assert len(written) == 1, (key, written)
        arr = read_image(written[0])
        assert arr.shape == (72, 80) and 0.0 <= arr.min() and arr.max() <= 1.0
    prob = read_image(next((tmp_path / "out" / "prob").glob("*.tif")))
    assert (prob >= 0.5).any() and (prob < 0.5).any()


def test_export_fails_loudly_when_test_model_fails(tiny_checkpoint, test_image, tmp_path, monkeypatch):
    from probda_deploy.model_zoo import package

    def shifted(outputs, where):  # the stored test outputs 0.5 off: no weights format reproduces them
        for k in outputs:
            outputs[k] += 0.5

    monkeypatch.setattr(package, "_check_outputs", shifted)
    out = tmp_path / "bad.zip"
    with pytest.raises(ZooValidationError, match="failed bioimageio.core's test.*onnx"):
        package.export_bioimageio(tiny_checkpoint, out, test_image=test_image, samples=4)
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_export_rejects_bad_inputs(tiny_checkpoint, tmp_path):
    from probda_deploy.model_zoo.package import export_bioimageio

    with pytest.raises(ExportError, match="--name"):
        export_bioimageio(tiny_checkpoint, tmp_path / "a.zip", name="bad/name")
    small = write_tiff_atomic(tmp_path / "small.tif", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    with pytest.raises(ExportError, match="smaller than the model's minimum 36x36"):
        export_bioimageio(tiny_checkpoint, tmp_path / "a.zip", test_image=small)
    with pytest.raises(ExportError, match="--authors"):
        export_bioimageio(tiny_checkpoint, tmp_path / "a.zip", authors=[";no name"])
    assert not (tmp_path / "a.zip").exists()


def test_safe_extract_refuses_zip_slip(tmp_path):
    bad = tmp_path / "evil.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(ZooValidationError, match="unsafe member name '../escape.txt'"):
        safe_extract(bad, tmp_path / "x")
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("/abs.txt", "x")
    with pytest.raises(ZooValidationError, match="unsafe member"):
        safe_extract(bad, tmp_path / "x")
    assert not (tmp_path / "escape.txt").exists()


def test_zoo_mean_equals_runtime_sampler(zoo_package, tiny_checkpoint, tmp_path):
    """Same checkpoint, same K and eps: the zoo package and probda's onnxruntime sampler agree (1e-4)."""
    sampler_mod = pytest.importorskip("probda_deploy.runtime.onnx_backend")
    onnx_mod = pytest.importorskip("probda_deploy.exporters.onnx")
    rdf, root = _rdf(zoo_package, tmp_path)
    eps = np.asarray(rdf["config"]["probda"]["sampling"]["eps"], np.float32)
    folder = onnx_mod.export_onnx(tiny_checkpoint, tmp_path / "tiny.probda", samples=len(eps))
    sampler = sampler_mod.load_export(folder, device="cpu")
    image = np.load(root / "test_input.npy")[0, 0]
    got = sampler.predict(image, eps=eps, tile=None)
    np.testing.assert_allclose(got["prob"], np.load(root / "test_output_prob.npy")[0, 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["std"], np.load(root / "test_output_std.npy")[0, 0], atol=1e-4, rtol=0)


def test_a_boundary_model_packages_foreground_and_boundary_channels(test_image, tmp_path):
    from probda_deploy.model_zoo.package import export_bioimageio
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    from .conftest import fitted_tiny_punet

    model, _ = fitted_tiny_punet(boundaries=True)
    ckpt = save_checkpoint(make_checkpoint(model, provenance={"torch_version": str(torch.__version__)}), tmp_path / "b.pt")
    report = export_bioimageio(ckpt, tmp_path / "out" / "b.zip", name="probda tiny boundary PUNet",
                               authors=["Test Author;probda tests"], test_image=test_image, samples=4, seed=3)
    assert report.summary.passed  # bioimageio.core ran both weights formats on the package
    rdf, root = _rdf(report, tmp_path)
    for out in rdf["outputs"]:
        assert [c for c in out["axes"][1]["channel_names"]] == ["foreground", "boundary"]
    prob = np.load(root / "test_output_prob.npy")
    assert prob.shape[:2] == (1, 2)
    from probda_deploy.model_zoo.graph import reference_outputs

    eps = torch.tensor(rdf["config"]["probda"]["sampling"]["eps"], dtype=torch.float32)
    x = torch.from_numpy(standardize(read_image(test_image), eps=1e-7))[None, None]
    with torch.no_grad():
        ref = reference_outputs(model, x, eps)[0].numpy()  # (2, H, W): mean foreground and boundary of the samples
    np.testing.assert_allclose(prob[0], ref, atol=1e-4)
    assert np.abs(prob[0, 1] - prob[0, 0]).max() > 0.1  # a channel of its own, not a copy of the foreground
