"""write_report: valid HTML, only existing files referenced, numbers equal to evaluate's JSON, panel sizes."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from probda_deploy.data.synthetic import write_dataset
from probda_deploy.evaluation import evaluate_model, write_eval
from probda_deploy.models import build_model
from probda_deploy.report import panel_size, write_report
from probda_deploy.report.calibration import CALIBRATION_SIZE
from probda_deploy.report.compare import COMPARE_SIZE

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Checks nesting of non-void tags, collects src/href and data-value cells per table id."""

    def __init__(self):
        super().__init__()
        self.stack, self.refs, self.errors, self.tables, self._table = [], [], [], {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [a[k] for k in ("src", "href") if k in a]
        if tag == "table":
            self._table = a.get("id")
            self.tables.setdefault(self._table, [])
        if tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        if tag == "td" and self._table is not None and self.tables[self._table] and "data-value" in a:
            self.tables[self._table][-1].append(a["data-value"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


def parse(path: Path) -> Checker:
    checker = Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    return checker


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    images, labels = write_dataset(tmp_path_factory.mktemp("rep"), n_images=3, shape=(48, 48), domain="target", seed=4)
    torch.manual_seed(0)
    a = build_model("punet-small", initial_features=8, depth=3).eval()
    torch.manual_seed(1)
    b = build_model("punet-small", initial_features=8, depth=3).eval()
    ra = evaluate_model(a, images, labels, samples=4, device="cpu")
    rb = evaluate_model(b, images, labels, samples=4, device="cpu", keep_names=list(ra.maps))
    return ra, rb


def test_report_is_valid_and_references_existing_files(reports, tmp_path):
    index = write_report(reports[0], tmp_path / "report", compare=reports[1], names=("adapted", "source"), max_panels=1)
    assert index == tmp_path / "report" / "index.html"
    checker = parse(index)
    assert checker.stack == [] and checker.refs
    for ref in checker.refs:
        assert not ref.startswith(("http:", "https:", "//")), ref
        assert ref.startswith("data:") or (index.parent / ref).is_file(), ref
    text = index.read_text()
    assert "<script" not in text and "adapted vs source" in text


def test_report_numbers_match_evaluate_json(reports, tmp_path):
    report, other = reports
    _, json_path = write_eval(report, tmp_path / "eval")
    summary = json.loads(json_path.read_text())
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    checker = parse(write_report(report, tmp_path / "report", compare=other, max_panels=0))
    table = [r for r in checker.tables["per-image"] if r]
    keys = ["dice_hard", "dice_soft", "iou", "foreground_pred", "foreground_true", "mean_consensus"]
    for cells, row in zip(table, rows):
        assert [float(c) for c in cells] == pytest.approx([float(row[k]) for k in keys], rel=1e-12)
    assert [float(c) for c in table[-1]] == pytest.approx([summary[f"mean_{k}" if k != "mean_consensus" else k] for k in keys])
    dice_hard, *_ = [r for r in checker.tables["summary"] if r]
    assert float(dice_hard[0]) == pytest.approx(summary["mean_dice_hard"], rel=1e-12)
    assert float(dice_hard[2]) == pytest.approx(summary["mean_dice_hard"] - other.summary["mean_dice_hard"])
    compare = [r for r in checker.tables["compare"] if r]
    assert len(compare) == 3
    for (a, b, d), ra, rb in zip(compare, report.rows, other.rows):
        assert (float(a), float(b), float(d)) == pytest.approx((ra.dice_hard, rb.dice_hard, ra.dice_hard - rb.dice_hard))
    copied = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert copied["mean_dice_hard"] == summary["mean_dice_hard"]


def test_panel_pngs_are_images_of_the_expected_size(reports, tmp_path):
    out = write_report(reports[0], tmp_path / "report", compare=reports[1], max_panels=2).parent
    panels = sorted((out / "panels").glob("*.png"))
    assert len(panels) == 2
    w, h = panel_size(2)
    for png in panels:
        img = iio.imread(png)
        assert img.shape[:2] == (h, w) and img.std() > 10  # drawn, not blank
    for name, (w, h) in (("calibration.png", CALIBRATION_SIZE), ("compare.png", COMPARE_SIZE)):
        img = iio.imread(out / name)
        assert img.shape[:2] == (h, w) and img.std() > 10


def test_inline_report_is_one_file(reports, tmp_path):
    index = write_report(reports[0], tmp_path / "inline", inline=True, max_panels=1)
    srcs = [r for r in parse(index).refs if not r.endswith((".csv", ".json"))]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(list((tmp_path / "inline" / "panels").glob("*.png"))) == 1
    w, h = panel_size(1)
    assert iio.imread(next((tmp_path / "inline" / "panels").glob("*.png"))).shape[:2] == (h, w)


def test_report_without_labels(reports, tmp_path):
    images = Path(reports[0].rows[0].image).parent
    report = evaluate_model(build_model("unet-small", initial_features=8, depth=3).eval(), images, None, device="cpu")
    index = write_report(report, tmp_path / "nolabels", max_panels=1)
    parse(index)
    assert not (tmp_path / "nolabels" / "calibration.png").exists()
    assert np.asarray(iio.imread(next((tmp_path / "nolabels" / "panels").glob("*.png")))).std() > 10
