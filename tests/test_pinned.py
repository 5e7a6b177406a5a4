"""Committed files written by an earlier probda (tests/fixtures/pinned/make.py) still load and give the same maps.

`probda segment` of the committed export and checkpoint reproduces the committed outputs: masks,
consensus and instances exactly (the image has no pixel within 1e-4 of a threshold, so they do not
depend on the CPU's rounding), probabilities and std to float precision; the committed adapted
checkpoint (EMA weights) and bioimage.io package still load.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from probda_deploy.cli.app import app

PINNED = Path(__file__).parent / "fixtures" / "pinned"
ATOL = 1e-5  # other CPUs round differently; on the machine that wrote the files the maps agree within 1e-6
runner = CliRunner()


@pytest.fixture(scope="module")
def pinned(tmp_path_factory) -> Path:
    """A copy of the fixtures (segmenting a checkpoint writes its export cache beside it)."""
    root = tmp_path_factory.mktemp("pinned") / "pinned"
    shutil.copytree(PINNED, root, ignore=shutil.ignore_patterns("make.py", "out_*"))
    return root


def segment(model: Path, out: Path, *extra: str) -> None:
    images = model.parent / "images"
    res = runner.invoke(app, ["segment", str(model), "-i", str(images), "-o", str(out), "--seed", "0",
                              "--threads", "1", "-q", *extra])
    assert res.exit_code == 0, res.output


def assert_same_outputs(got: Path, want: Path) -> None:
    names = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        if name.endswith(".csv"):
            a, b = (list(csv.DictReader((d / name).open())) for d in (got, want))
            assert [(r["id"], r["area"]) for r in a] == [(r["id"], r["area"]) for r in b]
            continue
        a, b = tifffile.imread(got / name), tifffile.imread(want / name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name.endswith(("_prob.tif", "_std.tif")):
            np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("model, want", [("model.probda", "out_export"), ("source.pt", "out_ckpt")])
def test_segment_reproduces_pinned_outputs(pinned, tmp_path, model, want):
    segment(pinned / model, tmp_path / "out", "--outputs", "mask,prob,consensus,std", "--instances", "-k", "8")
    assert_same_outputs(tmp_path / "out", PINNED / want)


def test_adapted_checkpoint_loads_its_ema_weights(pinned, tmp_path):
    segment(pinned / "adapted.pt", tmp_path / "out", "--outputs", "mask,prob", "-k", "8")
    got, want = (tifffile.imread(d / "image_prob.tif") for d in (tmp_path / "out", PINNED / "out_adapted"))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # the maps are those of the EMA weights, not of the trained student
    from probda_deploy.models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(pinned / "adapted.pt")
    ema = model_from_checkpoint(ckpt)
    student = model_from_checkpoint(ckpt, ema=False)
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(ema.state_dict().values(), student.state_dict().values()))


def test_pinned_package_passes_validation(pinned):
    res = runner.invoke(app, ["validate", str(pinned / "model.zip")])
    assert res.exit_code == 0, res.output
