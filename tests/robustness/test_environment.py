"""Wrong environment: --device cuda without a GPU, onnxruntime without a working CUDA provider.

Guarantee: the command says what it asked for, falls back to the CPU, and the
summary names the device and the onnxruntime execution provider that actually ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from probda_deploy.cli.app import app

from .conftest import blobs, labeled_folder, write_tif


def _cuda_works_in_onnxruntime() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and _torch_cuda()


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_no_gpu = pytest.mark.skipif(_torch_cuda(), reason="a CUDA GPU is present: the fallback path cannot be exercised")


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        img = blobs((32, 32), seed=i)
        write_tif(src / f"im{i}.tif", img)
    return src


@needs_no_gpu
def test_segment_cuda_falls_back_and_names_provider(robust_export, images, tmp_path, runner):
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(robust_export), str(images), "-o", str(out), "-k", "2", "--device", "cuda", "--quiet"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    summary = " ".join(res.stdout.split())
    assert "device cuda -> provider CPUExecutionProvider" in summary, res.output
    # the summary itself (not only the log) says CUDA was requested but could not be used
    assert "warning CUDA was requested but onnxruntime could not activate CUDAExecutionProvider" in summary, res.output
    assert "2 segmented" in flat
    assert tifffile.imread(out / "im0_mask.tif").shape == (32, 32)


def test_segment_auto_device_reports_real_provider(robust_export, images, tmp_path, runner):
    import onnxruntime as ort

    res = runner.invoke(app, ["segment", str(robust_export), str(images), "-o", str(tmp_path / "out"), "-k", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    line = flat.split("device", 1)[1].split("speed")[0]
    expected = "CUDAExecutionProvider" if _cuda_works_in_onnxruntime() else "CPUExecutionProvider"
    assert expected in line and expected in ort.get_available_providers(), res.output


@needs_no_gpu
def test_evaluate_cuda_falls_back(robust_export, images, tmp_path, runner):
    labels = tmp_path / "labels"
    labels.mkdir()
    for f in images.iterdir():
        write_tif(labels / f.name, (tifffile.imread(f) > 0.5).astype(np.uint8))
    res = runner.invoke(app, ["evaluate", str(robust_export), "-i", str(images), "-l", str(labels), "-k", "2", "--device", "cuda", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "CPUExecutionProvider" in " ".join(res.output.split()), res.output


@needs_no_gpu
def test_train_cuda_without_gpu_falls_back_to_cpu(tmp_path, runner):
    src, labels = labeled_folder(tmp_path, 2, prefix="im")
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "-i", str(src), "-l", str(labels), "-o", str(run), "--model", "unet-small", "--iterations", "2",
                              "--patch-size", "16", "--batch-size", "1", "--val-every", "2", "--device", "cuda", "--quiet"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert "--device cuda requested but no CUDA GPU is available" in flat and "using cpu" in flat, res.output
    assert "on cpu" in flat, res.output
    assert (run / "latest.pt").is_file()
