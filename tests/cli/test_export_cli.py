"""`probda export`: ONNX folders, errors, and the bioimageio hand-off."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.models import build_model
from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint
from probda_deploy.runtime import load_manifest

runner = CliRunner()


@pytest.fixture
def unet_ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model("unet-small", initial_features=8, depth=3)
    return save_checkpoint(make_checkpoint(model, provenance={"torch_version": str(torch.__version__)}), tmp_path / "u.pt")


def test_export_onnx_default_folder_and_refusal(unet_ckpt):
    res = runner.invoke(app, ["export", str(unet_ckpt), "--format", "onnx", "-q"])
    assert res.exit_code == 0, res.output
    folder = unet_ckpt.with_suffix(".probda")
    assert load_manifest(folder)["kind"] == "unet"
    assert "exported" in res.output and "probda segment" in res.output
    res = runner.invoke(app, ["export", str(unet_ckpt), "-q"])
    assert res.exit_code == 1 and "already exists; pass --overwrite" in res.output


def test_export_without_checkpoint_and_no_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["export"])
    assert res.exit_code == 1 and "no run with a best.pt" in res.output


def test_export_bad_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"nope")
    res = runner.invoke(app, ["export", str(tmp_path / "x.pt"), "-o", str(tmp_path / "x.probda")])
    assert res.exit_code == 1 and "x.pt" in res.output and not (tmp_path / "x.probda").exists()


def test_bioimageio_options_are_forwarded(tmp_path, monkeypatch, unet_ckpt):
    calls = []
    fake = types.ModuleType("probda_deploy.model_zoo.package")

    def export_bioimageio(checkpoint, out, **kwargs):
        calls.append((checkpoint, out, kwargs))
        return types.SimpleNamespace(path=tmp_path / "m.zip", formats={"onnx": "passed", "torchscript": "passed"})

    fake.export_bioimageio = export_bioimageio
    monkeypatch.setitem(sys.modules, "probda_deploy.model_zoo.package", fake)
    res = runner.invoke(app, [
        "export", str(unet_ckpt), "--format", "bioimageio", "-o", str(tmp_path / "m.zip"), "--name", "Nuclei",
        "--description", "d", "--authors", "Ann;Lab A", "--authors", "Bob", "--license", "CC-BY-4.0",
        "--test-image", str(tmp_path / "t.tif"), "--samples", "8",
    ])
    assert res.exit_code == 0, res.output
    (ckpt, out, kwargs), = calls
    assert ckpt == unet_ckpt and out == tmp_path / "m.zip"
    assert kwargs == {"name": "Nuclei", "description": "d", "authors": ["Ann;Lab A", "Bob"], "license": "CC-BY-4.0",
                      "test_image": tmp_path / "t.tif", "samples": 8, "seed": 0,
                      "consensus": {"rule": "agree", "threshold_high": 0.9, "threshold_low": 0.1, "class_threshold": 0.5}}
    assert "onnx passed" in res.output


def test_bioimageio_without_the_packager(monkeypatch, unet_ckpt):
    monkeypatch.setitem(sys.modules, "probda_deploy.model_zoo.package", None)
    res = runner.invoke(app, ["export", str(unet_ckpt), "--format", "bioimageio"])
    assert res.exit_code == 1 and "model zoo packager is not available" in res.output


@pytest.mark.parametrize("kind", ["punet", "unet"])
def test_info_on_an_export_summarises_its_manifest(kind, punet_export, unet_export):
    folder = punet_export if kind == "punet" else unet_export
    m = load_manifest(folder)
    res = runner.invoke(app, ["info", str(folder)], terminal_width=160)
    assert res.exit_code == 0, res.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in res.output.splitlines() if line.count("│") == 3}
    assert lines["files"] == f"{len(m['files'])} files, sha256 verified"
    assert lines["samples (default K)"] == str(m["default_samples"]) and lines["model"].startswith(m["kind"])
    assert all(g["file"] in res.output for g in m["graphs"].values())
    assert f"halo {m['default_halo']} px" in lines["tiling"]
