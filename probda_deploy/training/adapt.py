"""`adapt`: prepare data and models, then run a self-training strategy on the shared loop."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data.io import list_images
from ..data.pairs import match_labels
from ..data.patches import ImageSet, PatchSampler, grid_patches, load_image_set
from ..errors import ConfigError, TrainingStopped
from ..models.checkpoint import load_checkpoint, model_from_checkpoint
from ..files import sha256_file
from ..models.registry import model_from_spec
from .self_training import AdaptConfig, SelfTrainingStrategy
from .loop import FitResult, LoopConfig, fit
from .health import snapshot, write_health
from .pseudo_labels import source_maps

log = logging.getLogger(__name__)


def _target_sets(target: Path, target_labels: Path | None, cfg: AdaptConfig) -> tuple[ImageSet, ImageSet]:
    if target_labels is not None:
        data = load_image_set(match_labels(target, target_labels), labeled=True)
    else:
        data = load_image_set(list_images(target, what="target images"), labeled=False)
    return data.split(cfg.val_fraction, np.random.default_rng([cfg.seed, 17]))


def _initial_model(source_ckpt: dict, cfg: AdaptConfig) -> torch.nn.Module:
    if cfg.from_scratch:
        if not cfg.joint:
            raise ConfigError("--from-scratch needs --joint (separate adaptation starts from the source model)")
        torch.manual_seed(cfg.seed)
        return model_from_spec(source_ckpt["model_class"], dict(source_ckpt["model_config"]))
    return model_from_checkpoint(source_ckpt)  # deployed weights (teacher if the source was adapted)


def adapt(source: Path, target: Path, *, run_dir: Path, config: AdaptConfig = AdaptConfig(),
          target_labels: Path | None = None, source_images: Path | None = None, source_labels: Path | None = None,
          device: str = "cpu", resume: bool = False, provenance: dict | None = None,
          on_progress: Callable | None = None) -> FitResult:
    """Adapt a source checkpoint to unlabeled target images; writes best.pt/latest.pt into run_dir.

    The checkpoints deploy the EMA model (the student's average) for mean-teacher runs. On resume the
    options stored in run_dir/latest.pt are used (only --iterations may change).
    """
    cfg = config
    if resume and (Path(run_dir) / "latest.pt").exists():
        stored = load_checkpoint(Path(run_dir) / "latest.pt").get("adapt_config", {})
        if stored.get("teacher") is None:  # a checkpoint that stored no labeler: the one its options meant
            stored["teacher"] = "model" if stored.get("strategy") == "fixmatch" else ("ema" if "teacher" not in stored else None)
        cfg = replace(AdaptConfig(**stored), iterations=config.iterations)
    cfg.check()
    cfg = replace(cfg, teacher=cfg.labeler)  # stored explicitly, so a resume labels as the run began
    src_ckpt = load_checkpoint(source)
    model = _initial_model(src_ckpt, cfg).train()
    mult = model.config.size_multiple
    if cfg.patch_size % mult:
        raise ConfigError(f"--patch-size {cfg.patch_size} must be a multiple of {mult} for this model")
    train, val = _target_sets(target, target_labels, cfg)
    vx, vy = grid_patches(val, cfg.patch_size, normalization=cfg.normalization)
    src_sampler = None
    if cfg.joint:
        if source_images is None:
            raise ConfigError("--joint needs --source-images (and --source-labels unless labels sit next to the images)")
        src_sampler = PatchSampler(load_image_set(match_labels(source_images, source_labels), labeled=True), cfg.patch_size,
                                   normalization=cfg.normalization)
    torch.manual_seed(cfg.seed)
    source_health = snapshot(model, vx, k=cfg.val_samples, high=cfg.upper, low=cfg.lower)
    # alignment keeps the source model's own foreground fraction on the target (not the source labels':
    # a target with denser objects would be pushed towards the source's density)
    frac = source_health.foreground if cfg.aligned else None
    # target labels (if given) only measure the run: the patch sampler never sees them
    target_sampler = PatchSampler(ImageSet(train.images, None, train.names), cfg.patch_size, normalization=cfg.normalization)
    if cfg.fixed_labels:
        t = time.perf_counter()
        target_sampler = target_sampler.with_labels(source_maps(model, train.images, cfg.pseudo, seed=cfg.seed, device=device))
        log.info("source model's pseudo-labels for %d target images: %.1f s", len(train), time.perf_counter() - t)
    strategy = SelfTrainingStrategy(model, cfg, target_sampler, {"x": vx, "y": vy},
                                    source=src_sampler, source_fraction=frac, source_health=source_health)
    log.info("%s: %d target train / %d val images", cfg.name, len(train), len(val))
    extra = {
        "adapt_config": asdict(cfg),
        "train_config": src_ckpt.get("train_config", {}),
        "data_stats": src_ckpt.get("data_stats", {}),
        "normalization": src_ckpt.get("normalization", {}),
        "provenance": {
            **(provenance or {}), "source_checkpoint": str(source), "source_sha256": sha256_file(source),
            "strategy": cfg.name, "teacher": cfg.labeler, "filter": cfg.filter, "consensus": cfg.consensus, "teacher_ema": cfg.momentum,
            "target": str(target), "target_images": train.names, "val_images": val.names,
            "target_labels": None if target_labels is None else str(target_labels),
            "source_images": None if source_images is None else str(source_images),
        },
    }
    loop = LoopConfig(iterations=cfg.iterations, lr=cfg.lr, val_every=cfg.val_every, seed=cfg.seed)
    try:
        result = fit(strategy, loop, run_dir=run_dir, device=device, resume=resume, extra=extra, on_progress=on_progress)
    except TrainingStopped as e:
        write_health(run_dir, source_health, stopped=str(e))
        raise
    write_health(run_dir, source_health)
    return result
