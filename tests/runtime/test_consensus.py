"""Numpy consensus and sample reductions (METHOD.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest

from probda_deploy.errors import ConfigError
from probda_deploy.runtime import consensus, reduce_samples


def test_agree_counts_confident_samples_of_the_mean_class():
    # one pixel, 4 samples: mean 0.7 (foreground); two samples >= 0.9 -> 0.5
    probs = np.array([0.95, 0.92, 0.05, 0.88], np.float32)[:, None]
    assert consensus(probs, rule="agree")[0] == pytest.approx(0.5)
    # "confident" also counts the confident background sample
    assert consensus(probs, rule="confident")[0] == pytest.approx(0.75)


def test_thresholds_are_parameters():
    probs = np.array([0.85, 0.86], np.float32)[:, None]
    assert consensus(probs)[0] == 0
    assert consensus(probs, high=0.8)[0] == 1


def test_reduce_samples_population_std():
    probs = np.array([[0.2, 1.0], [0.6, 1.0]], np.float32)
    out = reduce_samples(probs)
    np.testing.assert_allclose(out["prob"], [0.4, 1.0])
    np.testing.assert_allclose(out["std"], [0.2, 0.0], atol=1e-7)
    assert out["consensus"].dtype == np.float32


def test_unknown_rule():
    with pytest.raises(ConfigError, match="unknown; choose agree or confident"):
        consensus(np.zeros((2, 1)), rule="vote")
