"""A long `probda segment` batch keeps its memory flat (the soak of benchmarks/soak.py, smaller).

Guarantee: nothing accumulates per image (sessions, buffers, results), so RSS
after warm-up stays within a small bound however many files a batch has.
The full 1000-image measurement is `python benchmarks/soak.py` (RESULTS.md).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOAK_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
GROWTH_BOUND_MB = 25.0


def _soak_module():
    spec = importlib.util.spec_from_file_location("probda_soak_benchmark", SOAK_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_rss_stays_flat_over_a_long_batch(robust_export, tmp_path):
    if not Path(sys.executable).with_name("probda").exists():
        pytest.skip("probda entry point not installed in this environment")
    soak = _soak_module()
    n = 400
    soak.write_images(tmp_path / "in", n, 64)
    samples, _, rc = soak.soak(robust_export, tmp_path / "in", tmp_path / "out", n)
    assert rc == 0
    assert len(list((tmp_path / "out").glob("*_mask.tif"))) == n
    assert samples[-1][0] >= n * 0.9, "RSS was not sampled up to the end of the batch"
    warm, end = soak.rss_at(samples, n // 5), soak.rss_at(samples, n)
    assert end - warm < GROWTH_BOUND_MB, f"RSS grew {end - warm:.1f} MB from image {n // 5} to {n} (bound {GROWTH_BOUND_MB} MB)"
