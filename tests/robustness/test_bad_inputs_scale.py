"""The bad-input guarantees on the scale-out paths: OME-Zarr outputs (streamed reads) and Dask workers.

The same folder of bad and unusual files as test_bad_inputs.py, run through
`--format ome-zarr` in one process, `--workers 2` (TIFF files as Dask tasks) and
both together (OME-Zarr blocks as Dask tasks): each bad file gives exactly one
error line with the same message as the in-memory path, no worker traceback or
retry noise, valid files are segmented, nothing partial is left.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from probda_deploy.cli.app import app

from .conftest import blobs, leftovers
from .test_bad_inputs import BAD, GOOD, _write_cases

ENGINES = {
    "ome-zarr": ["--format", "ome-zarr"],
    "dask-tif": ["--format", "tif", "--workers", "2"],
    "dask-ome-zarr": ["--format", "ome-zarr", "--workers", "2"],
}


# zarr inputs (streamed; not picked up by folder expansion with --format tif)
BAD_ZARR = {"nan_z": "NaN/inf", "corrupt_z": "not a readable image"}
GOOD_ZARR = {"good_z": (40, 48)}


def _write_zarr_cases(folder: Path) -> None:
    for name in ("good_z", "nan_z", "corrupt_z"):
        arr = zarr.open_array(str(folder / f"{name}.zarr"), mode="w", shape=(40, 48), chunks=(20, 24), dtype="float32")
        image = blobs((40, 48), seed=len(name))
        if name == "nan_z":
            image[33, 40] = np.nan
        arr[:] = image
    chunk = next(p for p in (folder / "corrupt_z.zarr").rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))
    chunk.write_bytes(b"\x00 not a compressed chunk " * 3)


@pytest.fixture(scope="module", params=sorted(ENGINES))
def run(request, robust_export, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"bad_{request.param}")
    _write_cases(root / "in")
    _write_zarr_cases(root / "in")
    out = root / "out"
    res = CliRunner().invoke(app, ["segment", str(robust_export), str(root / "in"), "-o", str(out), "-k", "2",
                                   "--outputs", "mask,prob", "--quiet", *ENGINES[request.param]])
    return request.param, res, out, root / "in"


def test_each_bad_file_is_one_error_line_and_the_batch_goes_on(run):
    engine, res, out, src = run
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    flat = " ".join(res.stdout.split())
    bad = {f"{k}.tif": v for k, v in BAD.items()}
    if engine != "dask-tif":
        bad.update({f"{k}.zarr": v for k, v in BAD_ZARR.items()})
    good = len(GOOD) + (len(GOOD_ZARR) if engine != "dask-tif" else 0)
    assert f"{good} segmented, 0 skipped (resume), {len(bad)} failed" in flat, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), res.stderr
    for name, fragment in bad.items():
        hits = [e for e in errors if name in e]
        assert len(hits) == 1 and str(src / name) in hits[0] and fragment in hits[0], (engine, name, res.stderr)
    for noise in ("Traceback", "Compute Failed", "retries"):
        assert noise not in res.output, (engine, res.output)


def test_valid_files_are_segmented_and_nothing_partial_is_left(run):
    engine, res, out, _ = run
    assert leftovers(out) == []
    if engine == "dask-tif":
        assert {p.name for p in out.iterdir()} == {f"{n}_{k}.tif" for n in GOOD for k in ("mask", "prob")}
        for name, shape in GOOD.items():
            assert tifffile.imread(out / f"{name}_mask.tif").shape == shape
        return
    assert {p.name for p in out.iterdir()} == {f"{n}.ome.zarr" for n in [*GOOD, *GOOD_ZARR]}
    for name, shape in {**GOOD, **GOOD_ZARR}.items():
        group = zarr.open(str(out / f"{name}.ome.zarr"), mode="r")
        prob, mask = group["0"][:], group["labels/mask/0"][:]
        assert mask.shape == shape and prob.shape == (1, *shape), (name, prob.shape)
        assert np.isfinite(prob).all() and set(np.unique(mask)) <= {0, 1}


def test_rgb_warning_is_shown_once(run):
    _, res, _, _ = run
    flat = " ".join(res.stderr.split())
    assert flat.count("rgb.tif: RGB image converted to grayscale") == 1, res.stderr
    assert flat.count("rgba.tif: RGBA image converted to grayscale") == 1, res.stderr
