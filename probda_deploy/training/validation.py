"""Validation on fixed patches: dice of the mean of K prior samples."""

from __future__ import annotations

import numpy as np
import torch

from ..models.inference import patch_samples


@torch.no_grad()
def mean_prediction(model: torch.nn.Module, x: np.ndarray, *, k: int = 8, batch_size: int = 4,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Mean foreground of K sigmoid samples (`patch_samples`) for (N, 1, H, W) standardised patches -> (N, 1, H, W)."""
    return np.concatenate([patch_samples(model, x[i : i + batch_size], k=k, first=i, device=device).mean(0).cpu().numpy()
                           for i in range(0, len(x), batch_size)])


def dice_scores(prob: np.ndarray, target: np.ndarray, eps: float = 1e-7) -> dict[str, float]:
    """Soft and hard (0.5) dice over a whole set of patches."""
    g = (target > 0.5).astype(np.float64)
    p = prob.astype(np.float64)
    h = (prob >= 0.5).astype(np.float64)
    soft = 2 * (g * p).sum() / (g.sum() + p.sum() + eps)
    hard = 2 * (g * h).sum() / (g.sum() + h.sum() + eps)
    return {"dice_soft": float(soft), "dice_hard": float(hard)}
