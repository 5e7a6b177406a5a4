"""Training curves of a run folder: losses, validation metrics and learning rate over iterations.

Reads `run_dir/metrics.jsonl` as written by training/loop.py `fit`: one JSON
object per validation with `iteration`, `train_*` (mean training logs since the
previous validation), `val_*` (validation results, `val_metric` lower is better),
`lr` and `best`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .figures import new_figure, save_png

log = logging.getLogger(__name__)

CURVES_SIZE = (1200, 400)  # PNG width, height in pixels


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Valid lines of `run_dir/metrics.jsonl` (a torn last line of a running job is skipped with a warning).

    Raises:
        ConfigError: no metrics file or no usable line in it.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; give a run folder written by `probda train` or `probda adapt`")
    lines = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError:
            log.warning("%s:%d: not valid JSON; line skipped", path, n)
            continue
        if isinstance(item, dict) and isinstance(item.get("iteration"), (int, float)):
            lines.append(item)
        else:
            log.warning("%s:%d: no iteration number; line skipped", path, n)
    if not lines:
        raise ConfigError(f"{path}: no validation lines yet; wait for the first validation of the run")
    return lines


def _series(lines: list[dict], prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    keys = sorted({k for line in lines for k, v in line.items() if k.startswith(prefix) and isinstance(v, (int, float))
                   and not isinstance(v, bool)})
    out = {}
    for key in keys:
        pts = [(line["iteration"], line[key]) for line in lines if isinstance(line.get(key), (int, float))]
        out[key] = (np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float))
    return out


def plot_training_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render losses, validation metrics and the learning rate to PNG.

    Args:
        run_dir: a run folder with metrics.jsonl.
        out: PNG path (default `run_dir/training_curves.png`).

    Returns:
        The PNG path; its size is CURVES_SIZE.

    Raises:
        ConfigError: no usable metrics.jsonl.
    """
    run_dir = Path(run_dir)
    lines = read_metrics(run_dir)
    fig = new_figure(CURVES_SIZE)
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    for key, (x, y) in _series(lines, "train_").items():
        ax_loss.plot(x, y, marker=".", label=key)
    ax_loss.set(title="training (mean since last validation)", xlabel="iteration")
    for key, (x, y) in _series(lines, "val_").items():
        ax_val.plot(x, y, marker=".", label=key)
    best = [(line["iteration"], line["val_metric"]) for line in lines if line.get("best") and "val_metric" in line]
    if best:
        ax_val.scatter(*zip(*best), marker="*", s=70, color="gold", edgecolor="black", zorder=3, label="new best")
    ax_val.set(title="validation (val_metric: lower is better)", xlabel="iteration")
    lr = _series(lines, "lr")
    if "lr" in lr:
        ax_lr.plot(*lr["lr"], marker=".", color="gray")
        if (lr["lr"][1] > 0).all():
            ax_lr.set_yscale("log")
    ax_lr.set(title="learning rate", xlabel="iteration")
    for ax in (ax_loss, ax_val):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run_dir.name}: {len(lines)} validations, last at iteration {int(lines[-1]['iteration'])}", fontsize=10)
    return save_png(fig, Path(out) if out is not None else run_dir / "training_curves.png")
