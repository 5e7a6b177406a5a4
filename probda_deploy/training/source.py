"""Source training (supervised) of a PUNet (ELBO) or UNet (dice) on labeled images."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data.augment import flip_rotate, robust_intensity
from ..data.pairs import match_labels
from ..data.patches import ImageSet, PatchSampler, foreground, grid_patches, load_image_set
from ..errors import ConfigError
from ..method import AUGMENTS, LOSSES, check_choice
from ..models.checkpoint import load_checkpoint, model_from_checkpoint
from ..models.registry import MODEL_VARIANTS, build_model
from .config import TrainConfig
from .loop import FitResult, LoopConfig, fit
from .losses import supervised_loss
from .health import snapshot
from .validation import dice_scores

log = logging.getLogger(__name__)


class SupervisedStrategy:
    """Labeled patches -> ELBO (PUNet) or dice (UNet); validation 1 - dice(mean of K samples)."""

    name = "source"

    def __init__(self, model: nn.Module, sampler: PatchSampler, val: tuple[np.ndarray, np.ndarray], *,
                 batch_size: int, augment: str = "robust", reconstruction: str = "dice", val_samples: int = 8):
        check_choice("--augment", augment, AUGMENTS)
        check_choice("--loss", reconstruction, LOSSES)
        self.model, self.sampler, self.val = model, sampler, val
        self.batch_size, self.augment = batch_size, augment
        self.reconstruction, self.val_samples = reconstruction, val_samples
        self.device = torch.device("cpu")

    def parameters(self):
        return list(self.model.parameters())

    def to(self, device, memory_format=torch.contiguous_format):
        self.device = torch.device(device)
        self.model.to(device, memory_format=memory_format)

    def sample_batch(self, rng):
        x, y = self.sampler.sample(rng, self.batch_size)
        x, y = flip_rotate(rng, x, y, rotate=self.augment == "robust")
        if self.augment == "robust":
            x = robust_intensity(rng, x)
        return {"x": x, "y": y}

    def step(self, batch):
        return supervised_loss(self.model, batch["x"], batch["y"], reconstruction=self.reconstruction)

    def on_step_end(self, iteration):
        pass

    def validate(self):
        snap = snapshot(self.model, self.val[0], k=self.val_samples, device=self.device)
        scores = dice_scores(snap.prob, self.val[1][:, :1])  # foreground
        return {"val_metric": 1 - scores["dice_soft"], "val_dice": scores["dice_soft"], "val_dice_hard": scores["dice_hard"],
                "val_diversity": snap.diversity}

    def checkpoint_extra(self):
        return {}

    def load_extra(self, ckpt):
        pass


def output_channels(cfg: TrainConfig) -> dict:
    """Model option for the outputs: foreground, and object boundaries with `cfg.boundaries`."""
    if not cfg.boundaries:
        return {}
    return {"num_classes": 2} if MODEL_VARIANTS.get(cfg.model, ("PUNet",))[0] == "PUNet" else {"out_channels": 2}


def prepare_source_data(images: Path, labels: Path | None, cfg: TrainConfig, size_multiple: int) -> tuple[ImageSet, ImageSet]:
    """Read and split labeled data; checks the patch size fits the network."""
    if cfg.patch_size % size_multiple:
        raise ConfigError(f"--patch-size {cfg.patch_size} must be a multiple of {size_multiple} for this model")
    data = load_image_set(match_labels(images, labels), labeled=True, boundaries=cfg.boundaries)
    return data.split(cfg.val_fraction, np.random.default_rng(cfg.seed))


def train_source(images: Path, labels: Path | None, *, run_dir: Path, config: TrainConfig = TrainConfig(),
                 model_options: dict | None = None, device: str = "cpu", resume: bool = False,
                 provenance: dict | None = None, on_progress: Callable | None = None) -> FitResult:
    """Train a PUNet/UNet on labeled source images; writes best.pt/latest.pt into run_dir.

    On resume the model and training configuration stored in run_dir/latest.pt are used.
    """
    cfg = config
    if resume and (Path(run_dir) / "latest.pt").exists():
        ckpt = load_checkpoint(Path(run_dir) / "latest.pt")
        stored = ckpt.get("train_config", {})
        cfg = TrainConfig(**{**stored, "iterations": config.iterations})
        model = model_from_checkpoint(ckpt, ema=False).train()
    else:
        torch.manual_seed(cfg.seed)  # reproducible initial weights
        model = build_model(cfg.model, **{**(model_options or {}), **output_channels(cfg)})
    train, val = prepare_source_data(images, labels, cfg, model.config.size_multiple)
    log.info("source training: %d train / %d val images", len(train), len(val))
    sampler = PatchSampler(train, cfg.patch_size, min_foreground=cfg.min_foreground, normalization=cfg.normalization)
    val_patches = grid_patches(val, cfg.patch_size, normalization=cfg.normalization)
    strategy = SupervisedStrategy(model, sampler, val_patches, batch_size=cfg.batch_size,
                                  augment=cfg.augment, reconstruction=cfg.reconstruction, val_samples=cfg.val_samples)
    loop = LoopConfig(iterations=cfg.iterations, lr=cfg.lr, val_every=cfg.val_every, seed=cfg.seed)
    extra = {"train_config": asdict(cfg),
             "data_stats": {"foreground_fraction": float(np.mean([foreground(lab).mean() for lab in train.labels]))},
             "provenance": {**(provenance or {}), "images": str(images), "labels": str(labels),
                            "train_images": train.names, "val_images": val.names}}
    return fit(strategy, loop, run_dir=run_dir, device=device, resume=resume, extra=extra, on_progress=on_progress)
