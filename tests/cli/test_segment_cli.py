"""`probda segment`: CLI summary, bad files, checkpoints, and a run with torch blocked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from probda_deploy.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def shared(punet_ckpt, punet_export):
    return punet_ckpt, punet_export


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(src / f"{name}.tif", (rng.random((36, 41)) * 255).astype(np.uint8))
    return src


def test_segment_export_folder(shared, images, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(out), "-k", "3", "--outputs", "mask,prob,labels", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "2 segmented, 0 skipped (resume), 0 failed" in res.output
    assert "provider CPUExecutionProvider" in res.output and "images/s" in res.output
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_{k}.tif" for n in "ab" for k in ("mask", "prob", "labels"))


def test_positional_inputs_and_bad_file(shared, images, tmp_path):
    (images / "bad.tif").write_bytes(b"junk")
    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(shared[1]), str(images / "a.tif"), str(images / "bad.tif"), "-o", str(out), "-q"])
    assert res.exit_code == 1
    assert "bad.tif: not a readable image" in res.output
    assert "1 segmented, 0 skipped (resume), 1 failed" in res.output
    assert (out / "a_mask.tif").exists() and not (out / "bad_mask.tif").exists()


def test_existing_outputs_and_resume(shared, images, tmp_path):
    args = ["segment", str(shared[1]), "-i", str(images), "-o", str(tmp_path / "out"), "-k", "2", "-q"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--resume to skip finished images" in res.output
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 0 and "0 segmented, 2 skipped" in res.output


def test_segment_with_a_checkpoint_uses_the_export_cache(shared, images, tmp_path):
    res = runner.invoke(app, ["segment", str(shared[0]), "-i", str(images / "a.tif"), "-o", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 0, res.output
    assert "reused cached export" in res.output.replace("\n", " ")


def test_usage_errors(shared, tmp_path):
    res = runner.invoke(app, ["segment", str(shared[1]), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no inputs" in res.output
    res = runner.invoke(app, ["segment", str(tmp_path / "nothing.probda"), "-i", "x.tif", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not an export folder" in res.output


BLOCK_TORCH = textwrap.dedent(
    """
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked for this test")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def test_segment_runs_with_torch_blocked(shared, images, tmp_path):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(block), os.environ.get("PYTHONPATH", "")])}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is blocked" in check.stderr
    cmd = [sys.executable, "-m", "probda_deploy.cli.app", "segment", str(shared[1]), "-i", str(images / "a.tif"), "-o", str(tmp_path / "out"), "-q"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert tifffile.imread(tmp_path / "out" / "a_prob.tif").shape == (36, 41)
    cmd[4] = str(shared[0])  # a checkpoint needs torch: one line naming the extra, exit 2, nothing written
    run = subprocess.run(cmd[:-3] + ["-o", str(tmp_path / "ckpt"), "-q"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and 'pip install "probda[train]"' in run.stderr and "torch" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "ckpt").exists()
    train = [sys.executable, "-m", "probda_deploy.cli.app", "train", "-i", str(images), "-o", str(tmp_path / "run")]
    run = subprocess.run(train, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and 'pip install "probda[train]"' in run.stderr and not (tmp_path / "run").exists()


def test_segment_instances_writes_ids_and_the_object_table(shared, images, tmp_path):
    import csv

    from probda_deploy.runtime.instances import InstanceConfig, separate_instances

    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(out), "-k", "3", "--instances",
                              "--threshold", "0.5", "--quiet"])
    assert res.exit_code == 0, res.output
    n_objects = 0
    for name in ("a", "b"):
        inst = tifffile.imread(out / f"{name}_instances.tif")
        prob = tifffile.imread(out / f"{name}_prob.tif")
        assert inst.dtype == np.uint16 and inst.shape == (36, 41)
        np.testing.assert_array_equal(inst, separate_instances(prob, InstanceConfig(threshold=0.5)))
        rows = list(csv.DictReader(open(out / f"{name}_objects.csv")))
        assert [int(r["id"]) for r in rows] == sorted(set(np.unique(inst)) - {0})
        for r in rows:
            sel = inst == int(r["id"])
            assert int(r["area"]) == sel.sum() and float(r["mean_prob"]) == pytest.approx(prob[sel].mean(), abs=1e-4)
        n_objects += len(rows)
    assert n_objects > 0  # the fixed-seed random model leaves a few objects above 0.5
    _check_least_certain(res.output, out)


def test_segment_instance_options(shared, images, tmp_path):
    """--seed-height, --min-size and --split reach the watershed of the TIFF and the OME-Zarr outputs."""
    import zarr

    from probda_deploy.runtime.instances import InstanceConfig, separate_instances

    out = tmp_path / "out"
    res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(out), "-k", "3", "--instances",
                              "--seed-height", "0.2", "--min-size", "3", "--split", "0.3", "--quiet"])
    assert res.exit_code == 0, res.output
    for name in ("a", "b"):
        prob = tifffile.imread(out / f"{name}_prob.tif")
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_instances.tif"),
                                      separate_instances(prob, InstanceConfig(threshold=0.5, seed_height=0.2, min_size=3, split=0.3)))
    for fmt in ("tif", "ome-zarr"):  # objects below --min-size vanish: every object of these small images
        big = tmp_path / f"big-{fmt}"
        res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(big), "-k", "3", "--instances",
                                  "--min-size", "5000", "--format", fmt, "--quiet"])
        assert res.exit_code == 0, res.output
        inst = (tifffile.imread(big / "a_instances.tif") if fmt == "tif"
                else zarr.open_group(str(big / "a.ome.zarr"), mode="r")["labels/instances/0"][:])
        assert inst.max() == 0 and " 0 in 2 image(s), 0 flagged" in res.output
    res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(tmp_path / "bad"), "--instances",
                              "--seed-height", "0"])
    assert res.exit_code != 0 and "--seed-height 0.0: must be > 0" in res.output


def _check_least_certain(output: str, out) -> None:
    """The summary lists the 10 objects of the batch with the lowest mean consensus, in order."""
    from probda_deploy.runtime.instances import least_certain, object_table

    assert "least certain objects" in output
    listed = [tuple(c.strip() for c in line.split("│")[1:3]) for line in output.splitlines() if line.startswith("│ ")]
    rows = []
    for name in ("a", "b"):
        inst = tifffile.imread(out / f"{name}_instances.tif")
        maps = {k: tifffile.imread(out / f"{name}_{k}.tif") for k in ("prob", "consensus", "std")}
        rows += [{**r, "image": f"{name}.tif"} for r in object_table(inst, maps)]
    expected = [(r["image"], str(r["id"])) for r in least_certain(rows, 10)]
    assert listed == expected and 0 < len(expected) == min(len(rows), 10)


def test_segment_instances_into_ome_zarr(shared, images, tmp_path):
    import zarr

    out = tmp_path / "z"
    res = runner.invoke(app, ["segment", str(shared[1]), "-i", str(images), "-o", str(out), "-k", "3", "--instances",
                              "--format", "ome-zarr", "--tile", "16", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "a.ome.zarr: 9 of 9 blocks written" in res.output and "flagged uncertain" in res.output
    for name in ("a", "b"):
        root = zarr.open_group(str(out / f"{name}.ome.zarr"), mode="r")
        assert dict(root["labels"].attrs)["labels"] == ["mask", "instances"]
        assert (out / f"{name}_objects.csv").is_file()
        for k, channel in enumerate(("prob", "consensus", "std")):  # the TIFF names _check_least_certain reads
            tifffile.imwrite(out / f"{name}_{channel}.tif", root["0"][k])
        tifffile.imwrite(out / f"{name}_instances.tif", root["labels/instances/0"][:])
    _check_least_certain(res.output, out)


@pytest.mark.parametrize("command", ["segment", "evaluate"])
def test_instance_option_defaults_are_the_library_defaults(command):
    """The CLI's --seed-height, --min-size and --split defaults are InstanceConfig's, so CLI and library runs agree."""
    import typer.main

    from probda_deploy.runtime.instances import InstanceConfig

    params = {p.name: p.default for p in typer.main.get_command(app).commands[command].params}
    assert (params["seed_height"], params["min_size"], params["split"]) == (
        InstanceConfig.seed_height, InstanceConfig.min_size, InstanceConfig.split)
