"""Pseudo-labels from a teacher and their consensus-based filtering (docs/method.md, "Pseudo-labels and consensus")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..method import (CONSENSUS_RULES, DEFAULT_RULE, FILTERS, HIGH, LOW, check_choice, check_thresholds, consensus,
                      filter_weights, latent_eps, standardize)
from ..models.inference import latent_dim, sample_probabilities


@dataclass(frozen=True)
class PseudoLabelConfig:
    """N prior samples, consensus rule and thresholds, filtering mode."""

    samples: int = 16
    rule: str = DEFAULT_RULE
    high: float = HIGH
    low: float = LOW
    filter: str = "masking"

    def __post_init__(self):
        check_choice("--consensus", self.rule, CONSENSUS_RULES)
        check_choice("--filter", self.filter, FILTERS)
        check_thresholds(self.high, self.low)


@torch.no_grad()
def pseudo_labels(teacher: torch.nn.Module, x: torch.Tensor, cfg: PseudoLabelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft pseudo-labels, loss weights and consensus for a batch.

    PUNet teacher: y = mean of N sigmoid prior samples, c = consensus of the
    samples. UNet teacher (baseline): y = its probability, c = 1 where it is
    confident (p >= high or p <= low).

    Args:
        x: (B, in, H, W) standardised (weak) view.

    Returns:
        y, weight, consensus: each (B, classes, H, W) float32.
    """
    if hasattr(teacher, "sample_logits"):
        samples = torch.sigmoid(teacher.sample_logits(x, k=cfg.samples)).float()
        y = samples.mean(0)
        c = consensus(samples, rule=cfg.rule, high=cfg.high, low=cfg.low, mean=y)
    else:
        y = torch.sigmoid(teacher(x)).float()
        c = ((y >= cfg.high) | (y <= cfg.low)).float()
    return y, filter_weights(c, cfg.filter), c


def source_maps(model: torch.nn.Module, images: list[np.ndarray], cfg: PseudoLabelConfig, *, seed: int = 0,
                device: str | torch.device = "cpu") -> list[np.ndarray]:
    """A frozen teacher's pseudo-labels for whole images: (2C, H, W) float32 each, the mean probability of
    each of the model's C outputs, then their consensus.

    A frozen model labelling a geometry-only view with whole-image statistics gives an image's pixels the
    same labels at every step, so they are computed once, with the whole image as context (as `probda
    segment` predicts; image i draws `method.latent_eps(seed, "image i", ...)`).
    """
    was = model.training
    model.eval()
    try:
        out, dim = [], latent_dim(model)
        for i, im in enumerate(images):
            eps = torch.from_numpy(latent_eps(seed, f"image {i}", cfg.samples, dim)[:, None]) if dim else None
            x = torch.from_numpy(standardize(im))[None, None].to(device)
            s = sample_probabilities(model, x, k=cfg.samples, eps=eps)[:, 0].float()
            mean = s.mean(0)
            c = consensus(s, rule=cfg.rule, high=cfg.high, low=cfg.low, mean=mean)
            out.append(torch.cat([mean, c]).cpu().numpy())
        return out
    finally:
        model.train(was)


def align_distribution(y: torch.Tensor, *, source_fraction: float, target_fraction: float) -> torch.Tensor:
    """Distribution alignment (FixMatch/AdaMatch): per-class ratios of class frequencies, renormalised.

    p_fg' = p * (s / t), p_bg' = (1 - p) * ((1 - s) / (1 - t)), y' = p_fg' / (p_fg' + p_bg'), with s and t
    the source and target foreground fractions (hard counts). y' stays a probability; t == s leaves y unchanged.
    """
    t = min(max(target_fraction, 1e-6), 1 - 1e-6)
    s = min(max(source_fraction, 1e-6), 1 - 1e-6)
    fg = y * (s / t)
    bg = (1 - y) * ((1 - s) / (1 - t))
    return fg / (fg + bg).clamp_min(1e-12)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, momentum: float) -> None:
    """theta_t <- a * theta_t + (1 - a) * theta_s for every parameter and buffer."""
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        if t.dtype.is_floating_point:
            t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
        else:
            t.copy_(s)
