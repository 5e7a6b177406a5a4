"""The calibration figure: error rate per consensus bin and a reliability curve of the mean probability.

The histograms are `metrics.CalibrationBins` (accumulated by the evaluation); this
module only reads them. Drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import N_BINS, CalibrationBins

__all__ = ["CALIBRATION_SIZE", "CalibrationBins", "plot_calibration"]

CALIBRATION_SIZE = (880, 360)  # PNG width, height in pixels


def plot_calibration(bins: CalibrationBins, path: str | Path, *, title: str = "") -> Path:
    """Two panels: error rate per consensus bin (bars, pixel share on top) and the reliability curve.

    Returns:
        The PNG path ((360, 880) RGBA image).
    """
    from .figures import new_figure, save_png

    fig = new_figure(CALIBRATION_SIZE)
    left, right = fig.subplots(1, 2)
    centers = (np.arange(N_BINS) + 0.5) / N_BINS
    rate = bins.error_rate
    left.bar(centers, np.nan_to_num(rate), width=0.9 / N_BINS, color="#d62728")
    share = bins.cons_count / max(bins.cons_count.sum(), 1)
    for x, r, s in zip(centers, rate, share):
        if not np.isnan(r):
            left.text(x, r, f"{100 * s:.0f}%", ha="center", va="bottom", fontsize=7)
    left.set(xlim=(0, 1), ylim=(0, max(0.05, float(np.nanmax(rate)) * 1.2) if np.isfinite(rate).any() else 1),
             xlabel="consensus (fraction of samples that agree)", ylabel="pixel error rate",
             title="error rate per consensus bin (% = share of pixels)")
    conf, freq = bins.reliability
    ok = ~np.isnan(conf)
    right.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect calibration")
    right.plot(conf[ok], freq[ok], marker="o", color="#1f77b4", label=f"model (ECE {bins.ece:.3f})")
    right.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed foreground fraction",
              title="reliability of the mean probability")
    right.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)
