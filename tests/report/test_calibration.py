"""Calibration bins: error rate per consensus bin and reliability arithmetic on hand-built maps."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from probda_deploy.report.calibration import CALIBRATION_SIZE, CalibrationBins, plot_calibration


def test_error_rate_and_reliability_by_hand(tmp_path):
    prob = np.array([0.95, 0.95, 0.05, 0.55, 0.45, 1.0], np.float32)
    cons = np.array([1.0, 1.0, 1.0, 0.25, 0.25, 0.95], np.float32)
    label = np.array([1, 0, 0, 0, 1, 1], np.float32)
    bins = CalibrationBins()
    bins.update(prob, cons, label)
    rate = bins.error_rate
    assert rate[9] == pytest.approx(1 / 4)  # 4 pixels with consensus >= 0.9, one wrong
    assert rate[2] == pytest.approx(1.0)  # both low-consensus pixels are wrong
    assert np.isnan(rate[[0, 1, 3, 4, 5, 6, 7, 8]]).all()
    conf, freq = bins.reliability
    assert conf[9] == pytest.approx((0.95 + 0.95 + 1.0) / 3) and freq[9] == pytest.approx(2 / 3)
    assert conf[0] == pytest.approx(0.05) and freq[0] == 0.0
    assert conf[4] == pytest.approx(0.45) and freq[4] == 1.0
    expected_ece = (3 * abs(2 / 3 - conf[9]) + 0.05 + abs(1 - 0.45) + abs(0 - 0.55)) / 6
    assert bins.ece == pytest.approx(expected_ece)
    d = bins.to_dict()
    assert d["consensus_pixels"][9] == 4 and d["error_rate_per_consensus_bin"][0] is None
    bins.update(prob, cons, label)  # accumulates
    assert bins.cons_count.sum() == 12 and bins.error_rate[9] == pytest.approx(1 / 4)
    img = iio.imread(plot_calibration(bins, tmp_path / "c.png"))
    assert img.shape[:2] == (CALIBRATION_SIZE[1], CALIBRATION_SIZE[0])


def test_empty_bins_plot(tmp_path):
    bins = CalibrationBins()
    assert np.isnan(bins.ece) and bins.to_dict()["ece"] is None
    assert plot_calibration(bins, tmp_path / "empty.png").is_file()
