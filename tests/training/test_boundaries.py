"""Boundary models (`probda train --boundaries`): targets, training, export, segmentation, adaptation, evaluation."""

from __future__ import annotations

import json

import numpy as np
import tifffile
import zarr
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.data.patches import boundary_targets, grid_patches, load_image_set, ImageSet
from probda_deploy.data.pairs import match_labels
from probda_deploy.models.checkpoint import load_checkpoint

runner = CliRunner()


def test_boundary_targets_mark_the_contact_between_touching_objects():
    ids = np.zeros((20, 30), np.uint16)
    ids[4:16, 3:15] = 1
    ids[4:16, 15:27] = 2  # touches object 1 along column 14/15
    t = boundary_targets(ids)
    assert t.shape == (2, 20, 30) and t.dtype == np.float32
    np.testing.assert_array_equal(t[0], ids > 0)
    assert t[1][4:16, 14].all() and t[1][4:16, 15].all()  # both sides of the contact (thick)
    assert not t[1][10, 8] and not t[1][10, 21]  # object interiors are not boundary
    binary = boundary_targets((ids > 0).astype(np.uint16))  # one id for both: no contact line to learn
    assert not binary[1][10, 14:16].any()


def test_boundary_labels_load_as_two_channels_and_validation_patches_keep_them(source_data):
    data = load_image_set(match_labels(*source_data), labeled=True, boundaries=True)
    assert all(lab.shape == (2, *img.shape) for img, lab in zip(data.images, data.labels))
    _, y = grid_patches(ImageSet(data.images, data.labels, data.names), 32)
    assert y.ndim == 4 and y.shape[1] == 2


def test_a_boundary_model_from_train_to_segment_adapt_and_evaluate(source_data, target_data, tmp_path):
    images, labels = source_data
    run = tmp_path / "src"
    r = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(run), "--model", "unet-small",
                            "--iterations", "3", "--patch-size", "32", "--batch-size", "2", "--val-every", "3",
                            "--boundaries", "--quiet"])
    assert r.exit_code == 0, r.output
    ckpt = load_checkpoint(run / "latest.pt")
    assert ckpt["model_config"]["out_channels"] == 2 and ckpt["train_config"]["boundaries"] is True

    r = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(tmp_path / "p"), "--iterations", "2",
                            "--patch-size", "32", "--batch-size", "2", "--val-every", "2", "--boundaries", "--quiet"])
    assert r.exit_code == 0, r.output
    punet = tmp_path / "p" / "latest.pt"
    assert load_checkpoint(punet)["model_config"]["num_classes"] == 2

    # export (the export's own check compares onnxruntime's prob and boundary maps with torch's) and segment
    out = tmp_path / "seg"
    r = runner.invoke(app, ["segment", str(punet), "-i", str(target_data[0]), "-o", str(out),
                            "--outputs", "mask,boundary,instances", "--samples", "4"])
    assert r.exit_code == 0, r.output
    name = sorted(target_data[0].glob("*.tif"))[0].stem
    boundary = tifffile.imread(out / f"{name}_boundary.tif")
    assert boundary.dtype == np.float32 and boundary.shape == tifffile.imread(out / f"{name}_mask.tif").shape
    assert 0 <= boundary.min() and boundary.max() <= 1

    zout = tmp_path / "zarr"
    r = runner.invoke(app, ["segment", str(punet), "-i", str(target_data[0]), "-o", str(zout), "--format", "ome-zarr",
                            "--outputs", "mask,instances", "--samples", "4", "--tile", "32"])
    assert r.exit_code == 0, r.output
    group = zarr.open_group(str(zout / f"{name}.ome.zarr"), mode="r")
    channels = [c["label"] for c in group.attrs["omero"]["channels"]]
    assert channels[-1] == "boundary"  # the instance pass needs it, so it is stored
    np.testing.assert_allclose(group["0"][channels.index("boundary")], boundary, atol=1e-4)  # tiled: other window shapes

    r = runner.invoke(app, ["segment", str(run / "latest.pt"), "-i", str(target_data[0]), "-o", str(tmp_path / "u"),
                            "--outputs", "boundary"])
    assert r.exit_code == 0, r.output  # the UNet's boundary map too

    r = runner.invoke(app, ["adapt", str(punet), "--target", str(target_data[0]), "-o", str(tmp_path / "ad"),
                            "--iterations", "2", "--patch-size", "32", "--batch-size", "2", "--val-every", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    assert load_checkpoint(tmp_path / "ad" / "best.pt")["model_config"]["num_classes"] == 2
    health = json.loads((tmp_path / "ad" / "health.json").read_text())
    assert 0 <= health["adapted"]["foreground"] <= 1  # the foreground channel, not the mean over both

    r = runner.invoke(app, ["evaluate", str(tmp_path / "ad" / "best.pt"), "-i", str(target_data[0]), "-l", str(target_data[1]),
                            "-o", str(tmp_path / "ev"), "--samples", "4"])
    assert r.exit_code == 0, r.output
    assert "object_f1_50" in json.loads((tmp_path / "ev" / "summary.json").read_text())


def test_boundary_output_of_a_foreground_only_model_is_refused(punet_ckpt, target_data, tmp_path):
    r = runner.invoke(app, ["segment", str(punet_ckpt), "-i", str(target_data[0]), "-o", str(tmp_path / "o"),
                            "--outputs", "mask,boundary"])
    assert r.exit_code != 0
    assert "no boundary output" in r.output and "--boundaries" in r.output
