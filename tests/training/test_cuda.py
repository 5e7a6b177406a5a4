"""The GPU path of the training loop: AMP (float16 autocast + grad scaler), pinned-memory batches, NHWC.

Runs only where torch sees a CUDA device; on CPU machines every test here skips with the reason.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probda_deploy.models.checkpoint import load_checkpoint
from probda_deploy.training.adapt import adapt
from probda_deploy.training.self_training import AdaptConfig
from probda_deploy.training.config import TrainConfig
from probda_deploy.training.loop import _to_tensors
from probda_deploy.training.source import train_source

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: AMP and pinned-memory loading run only on a GPU")
CFG = TrainConfig(model="punet-small", iterations=4, batch_size=2, patch_size=32, lr=1e-3, val_every=2, seed=3)


def test_batches_are_pinned_copies_in_channels_last():
    batch = _to_tensors({"x": np.zeros((2, 1, 32, 32), np.float32), "y": np.ones((2, 1, 32, 32), np.float32)},
                        torch.device("cuda"))
    assert batch["x"].is_cuda and batch["x"].is_contiguous(memory_format=torch.channels_last)
    assert float(batch["y"].sum()) == 2 * 32 * 32


def test_source_training_and_mean_teacher_run_with_amp(source_data, target_data, tmp_path):
    images, labels = source_data
    res = train_source(images, labels, run_dir=tmp_path / "src", config=CFG,
                       model_options=dict(initial_features=8, depth=3), device="cuda")
    assert res.device.startswith("cuda") and np.isfinite(res.best_metric)
    ckpt = load_checkpoint(tmp_path / "src" / "latest.pt")
    assert ckpt["scaler"]["scale"] > 0  # the grad scaler ran (AMP on)
    res = adapt(tmp_path / "src" / "latest.pt", target_data[0], run_dir=tmp_path / "mt", device="cuda",
                config=AdaptConfig(iterations=4, batch_size=2, patch_size=32, val_every=2))
    assert res.device.startswith("cuda") and (tmp_path / "mt" / "best.pt").exists()
