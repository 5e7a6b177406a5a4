"""Speed work must not change training: a fixed-seed short run's per-step losses equal those recorded before it.

`data/fixed_seed_losses.json` holds the per-step losses of a source run and a Mean Teacher run
made with the code before the speed work (commit 7f06132: NCHW tensors, one fcomb conv per
sample stack). Regenerate only for an intended change of the training method:
`python tests/training/test_fixed_seed_losses.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from probda_deploy.training.adapt import adapt
from probda_deploy.training.self_training import AdaptConfig
from probda_deploy.training.config import TrainConfig
from probda_deploy.training.source import train_source

GOLDEN = Path(__file__).parent / "data" / "fixed_seed_losses.json"
SOURCE = TrainConfig(model="punet-small", iterations=8, batch_size=2, patch_size=32, lr=1e-3, val_every=4, seed=5)
MT = AdaptConfig(iterations=8, batch_size=2, patch_size=32, lr=1e-3, val_every=4, seed=5, ema=0.9, teacher="ema",
                  student_view="noise")  # the configuration the losses were recorded with
OPTS = dict(initial_features=8, depth=3)


def run_losses(source_data, target_data, root: Path) -> dict[str, list[float]]:
    """Per-step loss of an 8-step source run, then of an 8-step Mean Teacher run from its checkpoint."""
    out: dict[str, list[float]] = {"source": [], "mean_teacher": []}
    images, labels = source_data
    train_source(images, labels, run_dir=root / "source", config=SOURCE, model_options=OPTS,
                 on_progress=lambda i, n, logs: out["source"].append(logs["loss"]))
    adapt(root / "source" / "latest.pt", target_data[0], run_dir=root / "mt", config=MT,
          on_progress=lambda i, n, logs: out["mean_teacher"].append(logs["loss"]))
    return out


def test_fixed_seed_losses_equal_those_before_the_speed_work(source_data, target_data, tmp_path):
    golden = json.loads(GOLDEN.read_text())
    losses = run_losses(source_data, target_data, tmp_path)
    # recorded on another CPU: torch's kernels round differently per instruction set (1e-6 per step, grown by 8
    # steps); the Mean Teacher's masked pseudo-labels also flip where a sample is within that noise of 0.1 / 0.9
    tolerance = {"source": 1e-4, "mean_teacher": 1e-3}
    for kind in ("source", "mean_teacher"):
        assert len(losses[kind]) == len(golden[kind]) == 8
        assert losses[kind] == pytest.approx(golden[kind], rel=tolerance[kind], abs=1e-5), kind


if __name__ == "__main__":
    import tempfile

    from probda_deploy.data.synthetic import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        src = write_dataset(Path(tmp) / "s", n_images=8, shape=(64, 64), domain="source", seed=1)
        tgt = write_dataset(Path(tmp) / "t", n_images=6, shape=(64, 64), domain="target", seed=2)
        GOLDEN.write_text(json.dumps(run_losses(src, tgt, Path(tmp)), indent=1) + "\n")
    print(GOLDEN.read_text())
