"""Losses with optional per-pixel weights (docs/method.md, "Source training" and "Pseudo-labels and consensus").

A pixel with weight 0 contributes nothing to the loss value or its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..method import LOSSES
from ..models.punet import kl_diag_gaussians

L2_WEIGHT = 1e-5


def dice_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """1 - 2 sum(w p t) / (sum(w p^2) + sum(w t^2) + eps), over batch and space per channel, mean over channels.

    Args:
        logits, target, weight: (B, C, H, W); p = sigmoid(logits).
    """
    p = torch.sigmoid(logits.float())
    t = target.float()
    w = torch.ones_like(p) if weight is None else weight.float()
    dims = (0, 2, 3)
    num = 2 * (w * p * t).sum(dims)
    den = (w * p * p).sum(dims) + (w * t * t).sum(dims) + eps
    return 1 - (num / den).mean()


def bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean binary cross-entropy: sum(w * bce) / sum(w)."""
    per_px = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if weight is None:
        return per_px.mean()
    w = weight.float()
    return (w * per_px).sum() / w.sum().clamp_min(1e-6)


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of the weighted dice and BCE losses."""
    return dice_loss(logits, target, weight) + bce_loss(logits, target, weight)


RECONSTRUCTION = {"dice": dice_loss, "bce": bce_loss, "dice+bce": dice_bce_loss}
assert tuple(RECONSTRUCTION) == LOSSES, "method.LOSSES names the losses defined here"


def l2_norms(*modules: torch.nn.Module) -> torch.Tensor:
    """Sum of the L2 norms of every weight tensor of the modules (reference regulariser)."""
    return sum(p.norm(2) for m in modules for p in m.parameters())


def elbo_loss(model, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *,
              reconstruction: str = "dice", beta: float | None = None) -> tuple[torch.Tensor, dict]:
    """Negative ELBO of a PUNet: rec(fcomb(F, z~q), y; w) + beta * KL(q||p) + 1e-5 * L2.

    Args:
        x: (B, in, H, W) standardised patches (H, W multiples of the size multiple).
        y: (B, classes, H, W) target in [0, 1] (soft pseudo-labels allowed).
        weight: (B, classes, H, W) per-pixel weights or None.

    Returns:
        loss and a dict of floats (rec, kl).
    """
    beta = model.config.beta if beta is None else beta
    mu_q, ls_q = model.posterior_params(x, y)
    mu_p, ls_p = model.prior_params(x)
    z = mu_q + torch.exp(ls_q) * torch.randn_like(mu_q)
    logits = model.fcomb(model.features(x), z)
    rec = RECONSTRUCTION[reconstruction](logits, y, weight)
    kl = kl_diag_gaussians(mu_q, ls_q, mu_p, ls_p).mean()
    reg = L2_WEIGHT * l2_norms(model.prior, model.posterior, model.fcomb)
    return rec + beta * kl + reg, {"rec": float(rec.detach()), "kl": float(kl.detach())}


def unet_loss(model, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None, *,
              reconstruction: str = "dice", **_) -> tuple[torch.Tensor, dict]:
    """Supervised (or pseudo-label) loss of a plain UNet."""
    rec = RECONSTRUCTION[reconstruction](model(x), y, weight)
    return rec, {"rec": float(rec.detach())}


def supervised_loss(model, x, y, weight=None, **kw) -> tuple[torch.Tensor, dict]:
    """ELBO for PUNets, dice/BCE for UNets."""
    fn = elbo_loss if hasattr(model, "posterior") else unet_loss
    return fn(model, x, y, weight, **kw)
