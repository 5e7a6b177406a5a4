"""SIGKILL mid-run, then `--resume`: `probda segment` (folder), `probda train`, `probda adapt`.

Guarantees: outputs and checkpoints are written atomically (temp file + rename),
so a killed run leaves only complete, readable files; `--resume` of segment
finishes the rest, removes temp files the killed run left, and produces every
output exactly once, equal to an uninterrupted run; `--resume` of train/adapt
continues from latest.pt with optimizer, scheduler and RNG state restored, and
its final weights equal an uninterrupted run with the same seed on CPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import blobs, labeled_folder, leftovers, write_tif

PROBDA = Path(sys.executable).with_name("probda")
OUTS = ("mask", "prob", "consensus", "std")


def _probda(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(PROBDA), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **kwargs)


def _kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 240) -> None:
    """SIGKILL `proc` as soon as `ready()` is true; skip the test if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip(f"{what} finished before it could be killed (rc {proc.returncode}): machine too fast for this case")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_then_resume_completes_every_output(robust_export, tmp_path):
    if not PROBDA.exists():
        pytest.skip(f"{PROBDA}: probda entry point not installed in this environment")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    n = 120
    for i in range(n):
        write_tif(src / f"im{i:03d}.tif", blobs((96, 96), seed=i))
    args = ["segment", str(robust_export), str(src), "-o", str(out), "-k", "4", "--threads", "1", "--quiet"]
    _kill_when(_probda(*args), lambda: out.is_dir() and len(list(out.glob("*_std.tif"))) >= 3, "segment")
    finished_before = {p.name for p in out.glob("*.tif")}
    assert 0 < len(finished_before) < n * len(OUTS)
    for p in out.glob("*.tif"):  # whatever the killed run left is complete
        assert tifffile.imread(p).shape == (96, 96), p

    resumed = _probda(*args, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr.decode()
    text = " ".join(stdout.decode().split())
    assert "0 failed" in text and "skipped (resume)" in text, text
    assert leftovers(out) == []
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"im{i:03d}_{k}.tif" for i in range(n) for k in OUTS)
    # resumed results equal an uninterrupted run (latents depend on seed + file name only)
    for i in (0, n // 2, n - 1):
        mask = tifffile.imread(out / f"im{i:03d}_mask.tif")
        prob = tifffile.imread(out / f"im{i:03d}_prob.tif")
        assert mask.dtype == np.uint8 and prob.dtype == np.float32 and np.isfinite(prob).all()
    ref = tmp_path / "ref"
    pick = [src / "im000.tif", src / f"im{n - 1:03d}.tif"]
    again = _probda("segment", str(robust_export), *map(str, pick), "-o", str(ref), "-k", "4", "--threads", "1", "--quiet")
    again.communicate(timeout=120)
    assert again.returncode == 0
    for f in pick:
        for k in OUTS:
            np.testing.assert_array_equal(tifffile.imread(out / f"{f.stem}_{k}.tif"), tifffile.imread(ref / f"{f.stem}_{k}.tif"))


def test_resume_removes_stale_temp_files(robust_export, tmp_path, runner):
    """A temp file a killed writer left (`.NAME_mask.tif.XXXX.tmp`) is cleaned up and never taken as output."""
    from probda_deploy.cli.app import app

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    write_tif(src / "a.tif", blobs((32, 32)))
    (out / ".a_mask.tif.abc123.tmp").write_bytes(b"half a tiff")
    (out / "a_mask.tif").write_bytes(b"")  # not all outputs exist -> a is redone
    res = runner.invoke(app, ["segment", str(robust_export), str(src), "-o", str(out), "-k", "2", "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert leftovers(out) == []
    assert tifffile.imread(out / "a_mask.tif").shape == (32, 32)


# ------------------------------------------------------------------ train / adapt
TRAIN_ITERATIONS, VAL_EVERY = 160, 20


def _training_args(command: str, data: tuple[Path, Path], ckpt: Path, config: Path, run: Path) -> list[str]:
    images, labels = data
    common = ["--iterations", str(TRAIN_ITERATIONS), "--val-every", str(VAL_EVERY), "--patch-size", "32", "--batch-size", "2",
              "--seed", "3", "--device", "cpu", "--quiet", "-o", str(run)]
    if command == "train":
        return ["train", "-i", str(images), "-l", str(labels), "--config", str(config), *common]
    return ["adapt", str(ckpt), "-t", str(images), "--samples", "4", "--lr", "1e-3", *common]


def _metrics_lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "adapt"])
def test_sigkill_training_then_resume_equals_uninterrupted(command, robust_ckpt, tmp_path):
    import torch

    from probda_deploy.models.checkpoint import load_checkpoint

    if not PROBDA.exists():
        pytest.skip(f"{PROBDA}: probda entry point not installed in this environment")
    data = labeled_folder(tmp_path / "data", 4, (64, 64), seed=100)
    config = tmp_path / "tiny.toml"
    config.write_text('model = "punet-small"\n[model_options]\ninitial_features = 8\ndepth = 3\n')
    killed, ref = tmp_path / "killed", tmp_path / "ref"

    _kill_when(_probda(*_training_args(command, data, robust_ckpt, config, killed)), lambda: _metrics_lines(killed) >= 3, command)
    # at most the temp file of the checkpoint being written when the kill came
    assert all(p.startswith((".latest.pt.", ".best.pt.")) for p in leftovers(killed)), leftovers(killed)
    at_kill = int(load_checkpoint(killed / "latest.pt")["iteration"])  # complete and loadable after the kill
    assert VAL_EVERY <= at_kill < TRAIN_ITERATIONS

    resumed = _probda(*_training_args(command, data, robust_ckpt, config, killed), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()
    uninterrupted = _probda(*_training_args(command, data, robust_ckpt, config, ref))
    out, err = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, err.decode()

    a, b = load_checkpoint(killed / "latest.pt"), load_checkpoint(ref / "latest.pt")
    assert int(a["iteration"]) == int(b["iteration"]) == TRAIN_ITERATIONS
    keys = ["state_dict"] + (["ema_state_dict"] if command == "adapt" else [])
    for key in keys:
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after kill + resume"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    assert a["scheduler"] == b["scheduler"]
    iterations = [json.loads(line)["iteration"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert iterations == list(range(VAL_EVERY, TRAIN_ITERATIONS + 1, VAL_EVERY))
    assert leftovers(killed) == []


# ------------------------------------------------------------------ OME-Zarr (big image, block-level resume)
@pytest.mark.slow
def test_sigkill_ome_zarr_then_resume_equals_uninterrupted(robust_export, tmp_path):
    import zarr

    from probda_deploy.runtime.ome_zarr import MARKERS, partial_path

    if not PROBDA.exists():
        pytest.skip(f"{PROBDA}: probda entry point not installed in this environment")
    big = write_tif(tmp_path / "big.tif", blobs((2048, 2048), seed=7))
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    args = ["segment", str(robust_export), str(big), "--format", "ome-zarr", "--tile", "256", "-k", "4", "--threads", "1", "--quiet"]
    markers = partial_path(killed / "big.ome.zarr") / MARKERS
    _kill_when(_probda(*args, "-o", str(killed)), lambda: markers.is_dir() and len(list(markers.iterdir())) >= 5, "segment")
    assert not (killed / "big.ome.zarr").exists(), "an incomplete OME-Zarr must never carry the final name"
    done_at_kill = len(list(markers.iterdir()))

    resumed = _probda(*args, "-o", str(killed), "--resume")
    stdout, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr.decode()
    text = " ".join(stdout.decode().split())
    written = int(text.split("big.ome.zarr: ", 1)[1].split(" of ", 1)[0])
    total = int(text.split("big.ome.zarr: ", 1)[1].split(" of ", 1)[1].split()[0])
    assert written <= total - done_at_kill, text  # blocks finished before the kill are not redone
    assert not partial_path(killed / "big.ome.zarr").exists() and leftovers(killed) == []

    again = _probda(*args, "-o", str(ref))
    again.communicate(timeout=600)
    assert again.returncode == 0
    a, b = zarr.open(str(killed / "big.ome.zarr"), mode="r"), zarr.open(str(ref / "big.ome.zarr"), mode="r")
    assert sorted(a.attrs.keys()) == sorted(b.attrs.keys())
    levels = len(a.attrs.get("multiscales", a.attrs.get("ome", {}).get("multiscales", [{}]))[0]["datasets"])
    assert levels >= 2
    for lvl in range(levels):
        np.testing.assert_array_equal(a[str(lvl)][:], b[str(lvl)][:])
        np.testing.assert_array_equal(a[f"labels/mask/{lvl}"][:], b[f"labels/mask/{lvl}"][:])
