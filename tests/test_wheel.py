"""The built wheel is the product: installed with the base requirements only into a fresh venv, it deploys.

Slow (it builds the wheel and installs the base requirements, from pip's cache where it can); CI runs it
(`make test-wheel`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*cmd, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps the summary at the terminal's width
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


@pytest.mark.slow
def test_the_wheel_with_base_requirements_segments_without_torch(punet_export, blobs, write_tif, tmp_path):
    from probda_deploy import __version__

    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", dist)
    (wheel,) = dist.glob("probda-*.whl")
    assert wheel.name.startswith(f"probda-{__version__}-")
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    py, probda = env / "bin" / "python", env / "bin" / "probda"
    _run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)

    assert _run(probda, "--version").stdout.strip() == f"probda {__version__}"
    assert _run(py, "-c", "import torch", check=False).returncode != 0  # the base install brings no PyTorch
    for module in ("bioimageio.core", "distributed", "matplotlib"):
        assert _run(py, "-c", f"import {module}", check=False).returncode != 0, module

    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        write_tif(images / f"img_{i}.tif", blobs((40, 52), seed=i))
    out = tmp_path / "seg"
    seg = _run(probda, "segment", punet_export, "-i", images, "-o", out, "-k", 2, "--instances", "--quiet")
    assert "2 segmented" in seg.stdout and "CPUExecutionProvider" in seg.stdout
    assert {p.name for p in out.glob("img_0*")} >= {"img_0_mask.tif", "img_0_prob.tif", "img_0_instances.tif", "img_0_objects.csv"}

    train = _run(probda, "train", "-i", images, "-l", images, "-o", tmp_path / "run", check=False)
    assert train.returncode == 2 and 'pip install "probda[train]"' in train.stderr
    assert len(train.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
