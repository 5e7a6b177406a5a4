"""`probda validate PACKAGE.zip`: bioimageio.core's test on a package, summary, exit codes."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.data.synthetic import make_nuclei
from probda_deploy.models import build_model
from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A tiny PUNet package whose fcomb head is scaled so the samples are confident."""
    from probda_deploy.model_zoo.package import export_bioimageio

    root = tmp_path_factory.mktemp("validate_cli")
    torch.manual_seed(0)
    model = build_model("punet-small", initial_features=8, depth=3).eval()
    with torch.no_grad():  # large logits: confident samples, so consensus is not all zero
        model.fcomb.last_layer.weight.mul_(40.0)
    ckpt = make_checkpoint(model, provenance={"torch_version": str(torch.__version__)})
    path = save_checkpoint(ckpt, root / "run" / "best.pt")
    image, _ = make_nuclei(np.random.default_rng(0), (64, 64))
    from probda_deploy.data.io import write_tiff_atomic

    img = write_tiff_atomic(root / "img.tif", image)
    return export_bioimageio(path, root / "m.zip", test_image=img, samples=4).path


def test_validate_passes_and_prints_summary(package):
    res = runner.invoke(app, ["validate", str(package), "--weight-format", "torchscript"])
    assert res.exit_code == 0, res.output
    assert "Reproduce test outputs from test inputs (torchscript)" in res.output
    text = " ".join(res.output.split())
    assert "ok " in text and "passed (torchscript passed)" in text and "bioimageio.core 0.11.0" in text


def test_validate_fails_on_tampered_package(package, tmp_path):
    bad = tmp_path / "tampered.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "test_output_prob.npy":
                buf = io.BytesIO()
                np.save(buf, np.zeros_like(np.load(io.BytesIO(data))) + 0.5)
                data = buf.getvalue()
            dst.writestr(item, data)
    res = runner.invoke(app, ["validate", str(bad), "--weight-format", "torchscript", "--quiet"])
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "failed" in text and f"run `bioimageio test {bad}`" in text


def test_validate_refuses_unsafe_and_missing(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../etc/x", "x")
    res = runner.invoke(app, ["validate", str(evil)])
    assert res.exit_code == 1 and "unsafe member name" in " ".join(res.output.split())
    res = runner.invoke(app, ["validate", str(tmp_path / "none.zip")])
    assert res.exit_code == 1 and "no such package" in " ".join(res.output.split())
