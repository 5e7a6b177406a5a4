"""Fixtures of the robustness suite: one tiny export + checkpoint per session, tiny images, a CLI runner."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

TINY = dict(initial_features=8, depth=3)


@pytest.fixture(scope="session")
def robust_ckpt(tmp_path_factory) -> Path:
    """A probda checkpoint of an untrained tiny PUNet (punet-small, 8 features, depth 3)."""
    import torch

    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model("punet-small", **TINY)
    return save_checkpoint(make_checkpoint(model), tmp_path_factory.mktemp("robust_ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def robust_export(robust_ckpt, tmp_path_factory) -> Path:
    """ONNX export folder of `robust_ckpt` (K=4), made once per session with export_onnx."""
    from probda_deploy.exporters.onnx import export_onnx

    return export_onnx(robust_ckpt, tmp_path_factory.mktemp("robust_export") / "tiny.probda", samples=4)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def blobs(shape=(32, 32), seed=0) -> np.ndarray:
    """float32 image with bright discs on noise (never constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = rng.normal(0, 0.2, shape)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 7)
        img += ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    return img.astype(np.float32)


def write_tif(path: Path, array: np.ndarray) -> Path:
    tifffile.imwrite(path, array)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temp files left in a folder (there must be none after any run)."""
    return sorted(p.name for p in Path(folder).rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


def labeled_folder(root: Path, n: int, shape=(32, 32), *, seed: int = 0, prefix: str = "good") -> tuple[Path, Path]:
    """root/images and root/labels with `n` blob images and their binary labels (same stems)."""
    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(exist_ok=True)
    for i in range(n):
        img = blobs(shape, seed=seed + i)
        write_tif(images / f"{prefix}{i}.tif", img)
        write_tif(labels / f"{prefix}{i}.tif", (img > 0.5).astype(np.uint8))
    return images, labels
