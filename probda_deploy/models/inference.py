"""Batched sampling of a torch model on standardised patches, for training's validation and health checks.

Whole images (any size, tiled or not) are predicted through the one engine instead
(`backends.load_backend(...).predict`, `runtime.predict.predict_image`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..method import latent_eps


def patch_eps(seed: int, first: int, count: int, k: int, latent_dim: int) -> torch.Tensor:
    """(K, count, L) draws for patches first .. first + count - 1: `method.latent_eps` keyed by "patch N",
    so every patch has its own draws whatever the batch size or order."""
    return torch.from_numpy(np.stack([latent_eps(seed, f"patch {first + j}", k, latent_dim) for j in range(count)], axis=1))


@torch.no_grad()
def sample_probabilities(model: torch.nn.Module, x: torch.Tensor, *, k: int = 16,
                         eps: torch.Tensor | None = None) -> torch.Tensor:
    """(K, B, C, H, W) sigmoid samples of a PUNet for eps (K, B, L) (the torch RNG if None); (1, B, C, H, W) for a UNet."""
    if hasattr(model, "sample_logits"):
        return torch.sigmoid(model.sample_logits(x, eps=None if eps is None else eps.to(x.device), k=k))
    return torch.sigmoid(model(x))[None]


def latent_dim(model: torch.nn.Module) -> int:
    """The model's latent dimension (0 for UNets)."""
    return int(getattr(getattr(model, "config", None), "latent_dim", 0)) if hasattr(model, "sample_logits") else 0


@torch.no_grad()
def patch_samples(model: torch.nn.Module, x: np.ndarray, *, k: int, first: int = 0, seed: int = 0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Foreground samples (K, B, 1, H, W) for (B, 1, H, W) standardised patches numbered first, first + 1, ...;
    PUNets draw `patch_eps`, so the same patch gets the same samples in every call."""
    dim = latent_dim(model)
    eps = patch_eps(seed, first, len(x), k, dim) if dim else None
    return sample_probabilities(model, torch.from_numpy(np.ascontiguousarray(x)).to(device), k=k, eps=eps)[:, :, :1].float()
