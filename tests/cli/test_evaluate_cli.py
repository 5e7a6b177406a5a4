"""`probda evaluate`: CSV/JSON against independently computed metrics, bad files, report with --compare."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from probda_deploy import metrics
from probda_deploy.cli.app import app
from probda_deploy.data.io import read_image, read_label
from probda_deploy.data.synthetic import write_dataset
from probda_deploy.models.checkpoint import model_from_checkpoint
from probda_deploy.method import latent_eps, reduce_samples, standardize

runner = CliRunner()
KEYS = ("mean_dice_hard", "mean_dice_soft", "mean_iou", "n_images", "mean_consensus")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("evalcli"), n_images=3, shape=(48, 48), domain="target", seed=6)


def test_evaluate_writes_csv_and_json_with_correct_values(tiny_checkpoint, data, tmp_path):
    images, labels = data
    res = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "-i", str(images), "-l", str(labels), "-k", "4",
                              "--out", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "mean" in res.output and "img_002.tif" in res.output and "cpu" in res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert all(k in summary for k in KEYS) and summary["n_images"] == 3 and summary["samples"] == 4
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    model = model_from_checkpoint(tiny_checkpoint)
    dice = []
    for row in rows:  # independently: the model's sample_logits with the documented latent draws + probda_deploy.metrics
        image, label = read_image(images / row["name"]), read_label(labels / row["name"])
        eps = torch.from_numpy(latent_eps(0, row["name"], 4, model.config.latent_dim)[:, None, :])
        with torch.no_grad():
            probs = torch.sigmoid(model.sample_logits(torch.from_numpy(standardize(image))[None, None], eps=eps))
        maps = reduce_samples(probs[:, 0, 0].numpy())
        # the engine tiles the prior and decodes per sample: a pixel within float noise of 0.5 (or of
        # 0.1 / 0.9 for the consensus) may fall on the other side, moving these by ~1e-3 on a 48 px image
        assert float(row["dice_hard"]) == pytest.approx(metrics.dice_hard(maps["prob"], label), abs=2e-3)
        assert float(row["dice_soft"]) == pytest.approx(metrics.dice_soft(maps["prob"], label), abs=1e-6)
        assert float(row["iou"]) == pytest.approx(metrics.iou(maps["prob"], label), abs=2e-3)
        assert float(row["mean_consensus"]) == pytest.approx(maps["consensus"].mean(), abs=1e-3)
        dice.append(float(row["dice_hard"]))
    assert summary["mean_dice_hard"] == pytest.approx(np.mean(dice))


def test_bad_file_error_line_exit_1_other_rows_written(tiny_checkpoint, tmp_path):
    images, labels = write_dataset(tmp_path, n_images=2, shape=(48, 48))
    (images / "corrupt.tif").write_bytes(b"\x00garbage")
    (labels / "corrupt.tif").write_bytes((labels / "img_000.tif").read_bytes())
    res = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "-i", str(images), "-l", str(labels), "-k", "2",
                              "--out", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "corrupt.tif" in errors[0] and "not a readable image" in errors[0]
    rows = list(csv.DictReader((tmp_path / "out" / "per_image.csv").open()))
    assert [r["name"] for r in rows] == ["img_000.tif", "img_001.tif"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_failed"] == 1 and summary["failed"][0]["file"].endswith("corrupt.tif")


def test_report_with_compare(tiny_checkpoint, data, tmp_path):
    import torch

    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(3)
    other = tmp_path / "source.pt"
    save_checkpoint(make_checkpoint(build_model("unet-small", initial_features=8, depth=3)), other)
    images, labels = data
    res = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "-i", str(images), "-l", str(labels), "-k", "2",
                              "--report", str(tmp_path / "rep"), "--compare", str(other), "--panels", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "diff" in res.output and "dice cmp" in res.output and "wrote" in res.output
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "id=\"compare\"" in index and "source.pt" in index
    assert len(list((tmp_path / "rep" / "panels").glob("*.png"))) == 1
    ours, theirs = (json.loads((tmp_path / "rep" / sub / "summary.json").read_text()) for sub in (".", "compare"))
    lines = {line.split("  ")[0]: line for line in res.output.splitlines()}  # instance labels: object metrics of both
    assert f"F1@0.5 {ours['object_f1_50']:.4f}, F1@.5:.95 {ours['object_f1_50_95']:.4f}" in lines["objects"]
    diff = ours["object_f1_50"] - theirs["object_f1_50"]
    assert f"F1@0.5 {theirs['object_f1_50']:.4f}" in lines["objects (cmp)"] and f"diff {diff:+.4f}" in lines["objects (cmp)"]


def test_missing_labels_folder_is_one_error(tiny_checkpoint, data, tmp_path):
    res = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "-i", str(data[0]), "-l", str(tmp_path / "nope"), "--quiet"])
    assert res.exit_code == 1
    assert "nope: labels folder does not exist" in res.output
