"""Object-level metrics on hand-built label pairs with known values."""

from __future__ import annotations

import numpy as np
import pytest

from probda_deploy.metrics import object_metrics


def _canvas():
    return np.zeros((30, 60), np.uint16)


def _truth():
    t = _canvas()
    t[0:10, 0:20] = 1  # 200 px rectangle
    t[15:25, 40:50] = 2  # 100 px square
    return t


def test_perfect_match():
    m = object_metrics(_truth(), _truth())
    assert m["object_f1_50"] == m["object_f1_50_95"] == m["panoptic_quality"] == m["mean_matched_iou"] == 1.0
    assert (m["objects_true"], m["objects_pred"]) == (2, 2)


def test_one_split_object():
    pred = _truth()
    pred[0:10, 14:20] = 3  # the rectangle split 140 / 60 px: IoU 0.7 and 0.3
    m = object_metrics(pred, _truth())
    assert (m["object_precision_50"], m["object_recall_50"], m["object_f1_50"]) == pytest.approx((2 / 3, 1.0, 0.8))
    # IoU 0.5-0.7: TP 2, FP 1 -> F1 0.8; 0.75-0.95: TP 1 (the square), FP 2, FN 1 -> F1 0.4
    assert m["object_f1_50_95"] == pytest.approx(0.6)
    assert m["panoptic_quality"] == pytest.approx((1.0 + 0.7) / (2 + 0.5))
    assert m["mean_matched_iou"] == pytest.approx(0.85)


def test_one_merge():
    true = _canvas()
    true[0:10, 0:14], true[0:10, 14:20] = 1, 2  # 140 and 60 px, touching
    pred = _canvas()
    pred[0:10, 0:20] = 7  # one object over both: IoU 0.7 and 0.3
    m = object_metrics(pred, true)
    assert (m["object_precision_50"], m["object_recall_50"], m["object_f1_50"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert m["panoptic_quality"] == pytest.approx(0.7 / 1.5)


def test_one_missing_object_and_empty_cases():
    pred = _truth()
    pred[pred == 2] = 0
    m = object_metrics(pred, _truth())
    assert (m["object_precision_50"], m["object_recall_50"], m["object_f1_50"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert object_metrics(_canvas(), _canvas())["object_f1_50"] == 1.0
    none = object_metrics(_canvas(), _truth())
    assert none["object_f1_50"] == 0.0 and none["objects_pred"] == 0 and none["panoptic_quality"] == 0.0
