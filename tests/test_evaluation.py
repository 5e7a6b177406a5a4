"""evaluate_model / write_eval: metrics of a model with known output, bad files, kept maps, no labels, ONNX."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from probda_deploy import metrics
from probda_deploy.data.io import read_image, read_label
from probda_deploy.method import standardize
from probda_deploy.data.synthetic import write_dataset
from probda_deploy.errors import CheckpointError, ConfigError
from probda_deploy.evaluation import ROW_FIELDS, evaluate_model, write_eval
from probda_deploy.runtime.instances import InstanceConfig


class ThresholdNet(torch.nn.Module):
    """A "UNet" whose output is known: logits +10 where the standardised image is > 0, else -10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, 10.0, -10.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("eval"), n_images=3, shape=(48, 48), domain="target", seed=3)


def test_metrics_of_a_known_model(data):
    images, labels = data
    report = evaluate_model(ThresholdNet(), images, labels, samples=4, device="cpu")
    assert report.kind == "unet" and report.samples == 1 and not report.failed
    assert [r.name for r in report.rows] == ["img_000.tif", "img_001.tif", "img_002.tif"]
    accuracy = []
    for row in report.rows:
        image, label = read_image(images / row.name), read_label(labels / row.name)
        pred = (standardize(image) > 0).astype(np.float32)
        assert row.dice_hard == pytest.approx(metrics.dice_hard(pred, label))
        assert row.iou == pytest.approx(metrics.iou(pred, label))
        assert row.dice_soft == pytest.approx(metrics.dice_soft(pred, label), abs=1e-3)
        assert row.foreground_pred == pytest.approx(pred.mean())
        assert row.foreground_true == pytest.approx(label.mean())
        assert row.mean_consensus == 1.0  # sigmoid(+-10) is beyond both thresholds
        accuracy.append((pred == label).mean())
    s = report.summary
    assert s["mean_dice_hard"] == pytest.approx(np.mean([r.dice_hard for r in report.rows]))
    assert s["n_images"] == 3 and s["mean_consensus"] == 1.0
    rate = s["calibration"]["error_rate_per_consensus_bin"]
    assert rate[:9] == [None] * 9 and rate[9] == pytest.approx(1 - np.mean(accuracy))


def test_write_eval_files_match_report(data, tmp_path):
    report = evaluate_model(ThresholdNet(), *data, device="cpu")
    csv_path, json_path = write_eval(report, tmp_path / "out")
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0])[: len(ROW_FIELDS)] == list(ROW_FIELDS)
    for row, r in zip(rows, report.rows):
        assert row["name"] == r.name and float(row["dice_hard"]) == pytest.approx(r.dice_hard, rel=1e-12)
    summary = json.loads(json_path.read_text())
    for key in ("mean_dice_hard", "mean_dice_soft", "mean_iou", "n_images", "mean_consensus"):
        assert summary[key] == report.summary[key]
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_bad_files_are_reported_and_the_rest_evaluated(data, tmp_path):
    images, labels = write_dataset(tmp_path, n_images=3, shape=(48, 48))
    (images / "broken.tif").write_bytes(b"not a tiff at all")
    (labels / "broken.tif").write_bytes(b"x")
    (images / "nolabel.tif").write_bytes((images / "img_000.tif").read_bytes())
    report = evaluate_model(ThresholdNet(), images, labels, device="cpu")
    assert [r.name for r in report.rows] == ["img_000.tif", "img_001.tif", "img_002.tif"]
    errors = dict(report.failed)
    assert set(errors) == {str(images / "broken.tif"), str(images / "nolabel.tif")}
    assert "not a readable image" in errors[str(images / "broken.tif")]
    assert "no label file found" in errors[str(images / "nolabel.tif")]
    assert report.summary["n_failed"] == 2


def test_maps_kept_for_worst_and_best_only(tmp_path):
    images, labels = write_dataset(tmp_path, n_images=5, shape=(48, 48), domain="target", seed=5)
    report = evaluate_model(ThresholdNet(), images, labels, device="cpu", keep=2, keep_names=["img_002.tif"])
    by_dice = sorted(report.rows, key=lambda r: r.dice_hard)
    assert set(report.maps) == {by_dice[0].name, by_dice[-1].name, "img_002.tif"}
    m = report.maps[by_dice[0].name]
    assert m.image.shape == m.prob.shape == m.consensus.shape == m.std.shape == m.label.shape == (48, 48)


def test_without_labels_predictions_only(data):
    report = evaluate_model(ThresholdNet(), data[0], None, device="cpu", keep=1)
    assert all(r.dice_hard is None and r.foreground_true is None for r in report.rows)
    s = report.summary
    assert s["mean_dice_hard"] is None and s["calibration"] is None and s["mean_foreground_pred"] > 0
    assert list(report.maps) == ["img_000.tif"] and report.maps["img_000.tif"].label is None


def test_bad_options_and_models(data, tmp_path):
    with pytest.raises(ConfigError, match="--samples 0"):
        evaluate_model(ThresholdNet(), *data, samples=0)
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        evaluate_model(tmp_path / "missing.pt", *data)


def test_export_folder_matches_checkpoint(data, tmp_path_factory, maps_close):
    """The ONNX runtime path uses the same latent draws: same numbers as the checkpoint."""
    from probda_deploy.exporters import cached_export
    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    ckpt = tmp_path_factory.getbasetemp() / "probda_shared" / "punet-small.pt"
    if not ckpt.exists():  # same tiny model as tests/runtime and tests/cli: one export per session
        torch.manual_seed(0)
        model = build_model("punet-small", initial_features=8, depth=3)
        save_checkpoint(make_checkpoint(model, provenance={"torch_version": str(torch.__version__)}), ckpt)
    folder = cached_export(ckpt, samples=8)[0]
    a = evaluate_model(ckpt, *data, samples=4, device="cpu")
    b = evaluate_model(folder, *data, samples=4, device="cpu")
    assert a.kind == b.kind == "punet" and b.provider.startswith("onnxruntime")
    for ra, rb in zip(a.rows, b.rows):  # torch against onnxruntime: float precision, not bits
        assert rb.dice_soft == pytest.approx(ra.dice_soft, abs=1e-5)
        assert rb.mean_consensus == pytest.approx(ra.mean_consensus, abs=1e-3)  # a pixel at a threshold moves it 1e-4
    assert a.maps.keys() == b.maps.keys()
    for name in a.maps:  # one engine, one consensus rule: the maps themselves agree
        maps_close({k: getattr(b.maps[name], k) for k in ("prob", "consensus", "std")},
                   {k: getattr(a.maps[name], k) for k in ("prob", "consensus", "std")}, atol=1e-5)


def test_instance_labels_add_object_metrics_and_binary_labels_do_not(tmp_path):
    import tifffile

    yy, xx = np.mgrid[:64, :64]
    ids = np.zeros((64, 64), np.uint16)
    for i, (cy, cx) in enumerate(((16, 16), (16, 46), (46, 30)), start=1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = i
    (tmp_path / "img").mkdir()
    (tmp_path / "inst").mkdir()
    (tmp_path / "bin").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", (ids > 0).astype(np.float32) * 100 + 10)
    tifffile.imwrite(tmp_path / "inst" / "a.tif", ids)
    tifffile.imwrite(tmp_path / "bin" / "a.tif", (ids > 0).astype(np.uint8))
    inst = evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "inst", device="cpu")
    assert inst.rows[0].dice_hard == 1.0
    assert inst.summary["object_f1_50"] == inst.summary["object_f1_50_95"] == inst.summary["panoptic_quality"] == 1.0
    binary = evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "bin", device="cpu")
    assert binary.rows[0].dice_hard == 1.0 and binary.summary["object_f1_50"] is None
    csv_path, json_path = write_eval(inst, tmp_path / "eval")
    assert json.loads(json_path.read_text())["object_f1_50"] == 1.0
    assert "object_f1_50" in next(csv.DictReader(open(csv_path)))


class TwoLevelNet(torch.nn.Module):
    """Logits +10 above `high`, +1 between `low` and `high` (probability 0.73: not confident), else -10."""

    def __init__(self, low: float, high: float):
        super().__init__()
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > self.high, 10.0, torch.where(x > self.low, 1.0, -10.0))


def test_least_certain_objects_in_summary_and_report(tmp_path):
    import tifffile

    from probda_deploy.report import write_report

    yy, xx = np.mgrid[:64, :64]
    ids = np.zeros((64, 64), np.uint16)
    for i, (cy, cx) in enumerate(((16, 16), (16, 46), (46, 30)), start=1):
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = i
    image = np.choose(ids, [10.0, 110.0, 110.0, 40.0]).astype(np.float32)  # the third disc is dim
    (tmp_path / "img").mkdir()
    (tmp_path / "inst").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", image)
    tifffile.imwrite(tmp_path / "inst" / "a.tif", ids)
    z = standardize(image)
    net = TwoLevelNet(low=float(z[ids == 0].max()), high=float(z[ids == 3].max()))
    report = evaluate_model(net, tmp_path / "img", tmp_path / "inst", device="cpu")
    assert report.rows[0].object_f1_50 == 1.0
    objects = report.objects
    assert len(objects) == 3 and [o["mean_consensus"] for o in objects] == sorted(o["mean_consensus"] for o in objects)
    dim = objects[0]  # the dim disc: probability 0.73 everywhere, no pixel confident
    assert dim["image"] == "a.tif" and dim["uncertain"] and dim["mean_consensus"] == 0.0
    assert (dim["centroid_y"], dim["centroid_x"], dim["area"]) == pytest.approx((46, 30, int((ids == 3).sum())))
    assert dim["mean_prob"] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)
    assert not objects[1]["uncertain"] and objects[1]["mean_consensus"] == 1.0
    _, json_path = write_eval(report, tmp_path / "eval")
    assert json.loads(json_path.read_text())["least_certain_objects"] == objects
    html = write_report(report, tmp_path / "report").read_text()
    table = html[html.index("<table id='objects'>"):]
    assert table.index("<td>46.0</td><td>30.0</td>") < table.index("</table>") and "uncertain" in table


def test_seed_height_and_min_size_reach_the_instances_scored(tmp_path):
    import tifffile

    from probda_deploy.errors import ConfigError

    yy, xx = np.mgrid[:64, :80]
    ids = np.zeros((64, 80), np.uint16)
    ids[(yy - 32) ** 2 + (xx - 25) ** 2 <= 144] = 1
    ids[((yy - 32) ** 2 + (xx - 47) ** 2 <= 144) & (ids == 0)] = 2  # two touching discs
    (tmp_path / "img").mkdir()
    (tmp_path / "inst").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", (ids > 0).astype(np.float32) * 100 + 10)
    tifffile.imwrite(tmp_path / "inst" / "a.tif", ids)
    split = evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "inst", device="cpu")
    merged = evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "inst", device="cpu", seed_height=20.0)
    dropped = evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "inst", device="cpu", min_size=1000)
    assert split.rows[0].object_f1_50 == 1.0 and split.summary["seed_height"] == InstanceConfig.seed_height
    assert merged.rows[0].object_f1_50 < 1.0 and merged.summary["seed_height"] == 20.0  # one seed for both discs
    assert dropped.rows[0].object_f1_50 == 0.0 and dropped.summary["min_size"] == 1000
    with pytest.raises(ConfigError, match="--seed-height"):
        evaluate_model(ThresholdNet(), tmp_path / "img", tmp_path / "inst", device="cpu", seed_height=0.0)
