"""Whole-image prediction with a torch model: mean probability, consensus, std, entropy."""

from __future__ import annotations

import numpy as np
import torch

from ..data.normalize import standardize
from .consensus import consensus_response
from .punet import PUNet


@torch.no_grad()
def sample_probabilities(model: torch.nn.Module, x: torch.Tensor, *, k: int = 16,
                         eps: torch.Tensor | None = None) -> torch.Tensor:
    """(K, B, C, H, W) sigmoid samples of a PUNet; (1, B, C, H, W) for a UNet."""
    if isinstance(model, PUNet) or hasattr(model, "sample_logits"):
        return torch.sigmoid(model.sample_logits(x, eps=eps, k=k))
    return torch.sigmoid(model(x))[None]


@torch.no_grad()
def image_samples(model: torch.nn.Module, image: np.ndarray, *, k: int = 16, eps: np.ndarray | None = None,
                  seed: int = 0, device: str = "cpu") -> torch.Tensor:
    """(K, C, H, W) sigmoid samples for one 2D image (whole-image standardisation).

    Args:
        image: (H, W) raw float32.
        eps: (K, 1, L) latent draws; from a torch generator seeded with `seed` if None.
    """
    x = torch.from_numpy(standardize(image))[None, None].to(device)
    if eps is None and hasattr(model, "config") and hasattr(model.config, "latent_dim"):
        g = torch.Generator().manual_seed(seed)
        eps_t = torch.randn(k, 1, model.config.latent_dim, generator=g).to(device)
    else:
        eps_t = None if eps is None else torch.as_tensor(eps, dtype=torch.float32, device=device)
    return sample_probabilities(model, x, k=k, eps=eps_t)[:, 0]


@torch.no_grad()
def predict_maps(model: torch.nn.Module, image: np.ndarray, *, k: int = 16, eps: np.ndarray | None = None,
                 seed: int = 0, rule: str = "agree", upper: float = 0.9, lower: float = 0.1,
                 device: str = "cpu") -> dict[str, np.ndarray]:
    """Predict one 2D image (whole-image standardisation; `image_samples`).

    Returns:
        dict of (H, W) float32 maps: prob, consensus, std, entropy of the foreground (+ boundary for
        models trained with `--boundaries`).
    """
    both = image_samples(model, image, k=k, eps=eps, seed=seed, device=device)
    samples = both[:, 0]  # foreground
    mean = samples.mean(0)
    p = mean.clamp(1e-6, 1 - 1e-6)
    out = {
        "prob": mean,
        "consensus": consensus_response(samples, rule=rule, upper=upper, lower=lower, mean=mean),
        "std": samples.std(0, unbiased=False),
        "entropy": -(p * p.log() + (1 - p) * (1 - p).log()),
    }
    if both.shape[1] > 1:  # a boundary model: mean probability of an object boundary
        out["boundary"] = both[:, 1].mean(0)
    return {key: v.float().cpu().numpy() for key, v in out.items()}
