import numpy as np
import pytest
import tifffile

from probda_deploy.data.pairs import match_labels
from probda_deploy.errors import LabelMatchError


def _img(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(p, np.eye(4, dtype=np.uint8))


def test_same_stem_in_labels_folder_and_suffixes(tmp_path):
    for n in ("a", "b", "c"):
        _img(tmp_path / "im" / f"{n}.tif")
    _img(tmp_path / "lab" / "a.tif")
    _img(tmp_path / "lab" / "b_masks.tif")
    _img(tmp_path / "lab" / "c_labels.png")
    pairs = match_labels(tmp_path / "im", tmp_path / "lab")
    assert [(i.name, l.name) for i, l in pairs] == [("a.tif", "a.tif"), ("b.tif", "b_masks.tif"), ("c.tif", "c_labels.png")]


def test_labels_next_to_images(tmp_path):
    _img(tmp_path / "x.tif")
    _img(tmp_path / "x_masks.tif")
    assert [(i.name, l.name) for i, l in match_labels(tmp_path)] == [("x.tif", "x_masks.tif")]


def test_missing_and_ambiguous_labels(tmp_path):
    _img(tmp_path / "im" / "a.tif")
    _img(tmp_path / "im" / "b.tif")
    _img(tmp_path / "lab" / "a.tif")
    with pytest.raises(LabelMatchError, match="b.tif: no label file found"):
        match_labels(tmp_path / "im", tmp_path / "lab")
    _img(tmp_path / "lab" / "b.tif")
    _img(tmp_path / "lab" / "b_masks.tif")
    with pytest.raises(LabelMatchError, match="several label files"):
        match_labels(tmp_path / "im", tmp_path / "lab")
