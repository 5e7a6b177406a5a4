"""Pseudo-labels from a teacher and their consensus-based filtering (docs/method.md, "Pseudo-labels and consensus")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..models.consensus import CONSENSUS_RULES, FILTERS, consensus_response, filter_weights
from ..models.predict import image_samples


@dataclass(frozen=True)
class PseudoLabelConfig:
    """N prior samples, consensus rule and thresholds, filtering mode."""

    samples: int = 16
    rule: str = "agree"
    upper: float = 0.9
    lower: float = 0.1
    filter: str = "masking"

    def __post_init__(self):
        from ..errors import ConfigError

        if self.rule not in CONSENSUS_RULES:
            raise ConfigError(f"unknown consensus rule '{self.rule}'; choose one of {', '.join(CONSENSUS_RULES)}")
        if self.filter not in FILTERS:
            raise ConfigError(f"unknown filter '{self.filter}'; choose one of {', '.join(FILTERS)}")
        if not 0 <= self.lower < 0.5 < self.upper <= 1:
            raise ConfigError(f"consensus thresholds must satisfy 0 <= lower < 0.5 < upper <= 1 (got {self.lower}, {self.upper})")


@torch.no_grad()
def pseudo_labels(teacher: torch.nn.Module, x: torch.Tensor, cfg: PseudoLabelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft pseudo-labels, loss weights and consensus for a batch.

    PUNet teacher: y = mean of N sigmoid prior samples, c = consensus of the
    samples. UNet teacher (baseline): y = its probability, c = 1 where it is
    confident (p >= upper or p <= lower).

    Args:
        x: (B, in, H, W) standardised (weak) view.

    Returns:
        y, weight, consensus: each (B, classes, H, W) float32.
    """
    if hasattr(teacher, "sample_logits"):
        samples = torch.sigmoid(teacher.sample_logits(x, k=cfg.samples)).float()
        y = samples.mean(0)
        c = consensus_response(samples, rule=cfg.rule, upper=cfg.upper, lower=cfg.lower, mean=y)
    else:
        y = torch.sigmoid(teacher(x)).float()
        c = ((y >= cfg.upper) | (y <= cfg.lower)).float()
    return y, filter_weights(c, cfg.filter), c


def source_maps(model: torch.nn.Module, images: list[np.ndarray], cfg: PseudoLabelConfig, *, seed: int = 0,
                device: str | torch.device = "cpu") -> list[np.ndarray]:
    """A frozen teacher's pseudo-labels for whole images: (2C, H, W) float32 each, the mean probability of
    each of the model's C outputs, then their consensus.

    A frozen model labelling a geometry-only view with whole-image statistics gives an image's pixels the
    same labels at every step, so they are computed once, with the whole image as context (as `probda
    segment` predicts).
    """
    was = model.training
    model.eval()
    try:
        out = []
        for im in images:
            s = image_samples(model, im, k=cfg.samples, seed=seed, device=str(device)).float()
            mean = s.mean(0)
            c = consensus_response(s, rule=cfg.rule, upper=cfg.upper, lower=cfg.lower, mean=mean)
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
