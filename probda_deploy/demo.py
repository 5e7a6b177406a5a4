"""The end-to-end demo on embedded synthetic data: each stage is one library call."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data.synthetic import write_dataset
from .training.config import TrainConfig
from .training.source import train_source

log = logging.getLogger(__name__)

# Sized for 2 CPU cores: ~1 s per training step of the small PUNet at 128 px.
DEMO_TRAIN = TrainConfig(model="punet-small", iterations=100, batch_size=4, patch_size=128, lr=1e-3,
                         val_every=50, val_fraction=0.15, augment="robust")


@dataclass
class DemoResult:
    out_dir: Path
    rows: list[tuple[str, str]] = field(default_factory=list)  # (what, value)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)  # (what, path)


def run_demo(out_dir: Path, *, seed: int = 0, device: str = "cpu",
             progress: Callable[[str, int], Callable] | None = None) -> DemoResult:
    """Synthetic source data -> train a small PUNet -> report validation dice.

    Args:
        progress: factory `(description, total) -> on_progress` for each training stage.
    """
    out_dir = Path(out_dir)
    res = DemoResult(out_dir)
    src_img, src_lab = write_dataset(out_dir / "source", n_images=20, shape=(256, 256), domain="source", seed=seed)
    res.artifacts.append(("source data (synthetic)", out_dir / "source"))
    cfg = DEMO_TRAIN if seed == 0 else TrainConfig(**{**DEMO_TRAIN.__dict__, "seed": seed})
    cb = progress("train source PUNet", cfg.iterations) if progress else None
    fit = train_source(src_img, src_lab, run_dir=out_dir / "source_run", config=cfg, device=device, on_progress=cb,
                       resume=(out_dir / "source_run" / "latest.pt").exists())
    res.rows.append(("source validation dice", f"{fit.last_metrics.get('val_dice', float('nan')):.3f}"))
    res.artifacts.append(("source model", out_dir / "source_run" / "best.pt"))
    return res
