"""Uncertainty vs error: error rate per consensus bin and a reliability curve of the mean probability.

The histograms accumulate over all pixels of all images (numpy only); the plot
is drawn with matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_BINS = 10
CALIBRATION_SIZE = (880, 360)  # PNG width, height in pixels


def _zeros() -> np.ndarray:
    return np.zeros(N_BINS, np.float64)


@dataclass
class CalibrationBins:
    """Pixel counts per bin, updated image by image.

    Attributes:
        cons_count, cons_errors: pixels and misclassified pixels per consensus bin [i/N, (i+1)/N).
        prob_count, prob_sum, prob_pos: pixels, sum of mean probability, foreground pixels per
            probability bin.
    """

    cons_count: np.ndarray = field(default_factory=_zeros)
    cons_errors: np.ndarray = field(default_factory=_zeros)
    prob_count: np.ndarray = field(default_factory=_zeros)
    prob_sum: np.ndarray = field(default_factory=_zeros)
    prob_pos: np.ndarray = field(default_factory=_zeros)

    def update(self, prob: np.ndarray, consensus: np.ndarray, label: np.ndarray, *, threshold: float = 0.5) -> None:
        """Add one image.

        Args:
            prob, consensus: (...) float32 mean probability and consensus in [0, 1].
            label: (...) binary mask (> 0.5 is foreground).
            threshold: of the hard prediction.
        """
        p, c = np.asarray(prob, np.float64).ravel(), np.asarray(consensus, np.float64).ravel()
        g = np.asarray(label).ravel() > 0.5
        wrong = (p >= threshold) != g
        ci, pi = _bin(c), _bin(p)
        self.cons_count += np.bincount(ci, minlength=N_BINS)
        self.cons_errors += np.bincount(ci, weights=wrong, minlength=N_BINS)
        self.prob_count += np.bincount(pi, minlength=N_BINS)
        self.prob_sum += np.bincount(pi, weights=p, minlength=N_BINS)
        self.prob_pos += np.bincount(pi, weights=g, minlength=N_BINS)

    @property
    def error_rate(self) -> np.ndarray:
        """(N_BINS,) fraction of wrong pixels per consensus bin (NaN where empty)."""
        return _ratio(self.cons_errors, self.cons_count)

    @property
    def reliability(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean predicted probability, observed foreground fraction) per probability bin (NaN where empty)."""
        return _ratio(self.prob_sum, self.prob_count), _ratio(self.prob_pos, self.prob_count)

    @property
    def ece(self) -> float:
        """Expected calibration error: pixel-weighted mean |observed - predicted| over probability bins."""
        total = self.prob_count.sum()
        if total == 0:
            return float("nan")
        conf, freq = self.reliability
        ok = self.prob_count > 0
        return float((self.prob_count[ok] * np.abs(freq[ok] - conf[ok])).sum() / total)

    def to_dict(self) -> dict:
        """JSON-ready: bin edges, error rate per consensus bin, reliability curve, ECE (None for empty bins)."""
        conf, freq = self.reliability
        return {
            "bin_edges": [round(float(x), 4) for x in np.linspace(0, 1, N_BINS + 1)],
            "consensus_pixels": [int(x) for x in self.cons_count],
            "error_rate_per_consensus_bin": _clean(self.error_rate),
            "probability_pixels": [int(x) for x in self.prob_count],
            "mean_probability_per_bin": _clean(conf),
            "foreground_fraction_per_bin": _clean(freq),
            "ece": None if np.isnan(self.ece) else self.ece,
        }


def _bin(values: np.ndarray) -> np.ndarray:
    return np.clip((values * N_BINS).astype(np.int64), 0, N_BINS - 1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _clean(values: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


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
