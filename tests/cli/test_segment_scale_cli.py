"""`probda segment` at scale: --format ome-zarr, --workers, --scheduler (dask scheduler/worker subprocesses), --resume of blocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from probda_deploy.cli.app import app

runner = CliRunner()

import inspect  # noqa: E402

from probda_deploy.cli import segment as _segment_cli  # noqa: E402

if "fmt" not in inspect.signature(_segment_cli.segment).parameters:
    pytest.skip("probda segment has no --format/--workers/--scheduler yet (apply /work/brief/scale_cli_segment.patch)", allow_module_level=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny punet-small export shared with the other CLI/runtime tests (same session folder)."""
    import torch

    from probda_deploy.exporters import cached_export
    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    ckpt = tmp_path_factory.getbasetemp() / "probda_shared" / "punet-small.pt"
    if not ckpt.exists():
        torch.manual_seed(0)
        model = build_model("punet-small", initial_features=8, depth=3)
        save_checkpoint(make_checkpoint(model, provenance={"torch_version": str(torch.__version__)}), ckpt)
    return cached_export(ckpt, samples=8)[0]


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        tifffile.imwrite(src / f"im{i}.tif", rng.normal(size=(64 + 8 * i, 60)).astype(np.float32))
    return src


def _invoke(*args):
    result = runner.invoke(app, ["segment", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def _same(a, b):
    names = sorted(p.name for p in a.glob("*.tif"))
    assert names and names == sorted(p.name for p in b.glob("*.tif"))
    for n in names:
        np.testing.assert_array_equal(tifffile.imread(a / n), tifffile.imread(b / n), err_msg=n)


def test_format_ome_zarr_and_resume(export, tmp_path):
    from probda_deploy.runtime import ome_zarr as oz
    from probda_deploy.runtime import segment

    img = np.random.default_rng(1).normal(size=(260, 250)).astype(np.float32)
    tifffile.imwrite(tmp_path / "big.tif", img)
    text = _invoke(export, "-i", tmp_path / "big.tif", "-o", tmp_path / "full", "--format", "ome-zarr", "--tile", 64, "-k", 3, "--quiet")
    assert "ome-zarr" in text and (tmp_path / "full" / "big.ome.zarr" / "labels" / "mask").is_dir()
    # an interrupted run: 4 of 20 blocks written, then the CLI resumes the rest

    def kill(done, total):  # 20 prior tiles, then 4 blocks
        if done == 20 + 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment(export, tmp_path / "big.tif", tmp_path / "cut", fmt="ome-zarr", samples=3, tile=64, on_progress=kill)
    assert len(oz.done_blocks(tmp_path / "cut" / "big.ome.zarr.partial")) == 4
    text = _invoke(export, "-i", tmp_path / "big.tif", "-o", tmp_path / "cut", "--format", "ome-zarr", "--tile", 64, "-k", 3, "--resume")
    assert "16 of 20 blocks written (resumed)" in text, text
    a, b = (zarr.open_group(str(tmp_path / d / "big.ome.zarr"), mode="r") for d in ("full", "cut"))
    for lvl in ("0", "1", "labels/mask/0"):
        np.testing.assert_array_equal(a[lvl][:], b[lvl][:])


def test_workers_equal_single_process(export, folder, tmp_path):
    _invoke(export, "-i", folder, "-o", tmp_path / "one", "-k", 2, "--threads", 1, "--quiet")  # the workers run 1 thread each: the same kernels
    text = _invoke(export, "-i", folder, "-o", tmp_path / "two", "-k", 2, "--workers", 2, "--threads", 1)
    assert "LocalCluster, 2 workers" in text
    _same(tmp_path / "one", tmp_path / "two")


def _wait_for(path, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if path.exists() and path.stat().st_size:
            return json.loads(path.read_text())
        time.sleep(0.3)
    raise TimeoutError(path)


def test_existing_scheduler_on_loopback(export, folder, tmp_path):
    dask = shutil.which("dask", path=os.path.dirname(sys.executable)) or shutil.which("dask")
    if dask is None:
        pytest.skip("dask command not installed")
    info = tmp_path / "scheduler.json"
    sched = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        address = _wait_for(info)["address"]
        worker = subprocess.Popen([dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _invoke(export, "-i", folder, "-o", tmp_path / "one", "-k", 2, "--threads", 1, "--quiet")
        text = _invoke(export, "-i", folder, "-o", tmp_path / "remote", "-k", 2, "--scheduler", address, "--threads", 1)
        assert f"dask: {address}" in text
        _same(tmp_path / "one", tmp_path / "remote")
    finally:
        for proc in (worker, sched):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_bad_format(export, folder, tmp_path):
    result = runner.invoke(app, ["segment", str(export), "-i", str(folder), "-o", str(tmp_path / "o"), "--format", "png"])
    assert result.exit_code != 0 and not (tmp_path / "o").exists()
