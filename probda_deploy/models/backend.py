"""The torch backend: a PUNet or UNet module behind the engine's per-window operations.

It runs the same steps as an export folder on onnxruntime, with the module's own parts: the prior
trunk summed over the cells each tile owns, the prior head once per image, the UNet on the window and
`Fcomb.sample` on its core; then `method.reduce_samples`. So a checkpoint predicts through the one
engine (`runtime.predict.predict_image`) with the same tiling, latent draws and reductions as its export.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..method import BOUNDARY_MAP, FLOAT_MAPS, NORMALIZATION, consensus_spec, reduce_samples
from ..runtime.backend import Backend, ProviderReport
from ..runtime.tiling import Tile
from .blocks import receptive_radius
from .punet import PUNet

log = logging.getLogger(__name__)


def runtime_spec(model: nn.Module) -> dict:
    """What the engine needs to know of a probda PUNet or UNet: kind, geometry, tiling and maps.

    The same keys an export's manifest.json records (`exporters.onnx` writes these into it). A module without
    a probda config (any torch module mapping (B, 1, H, W) to logits) runs on whole images only.
    """
    if not hasattr(model, "config"):
        return {"kind": "unet", "size_multiple": 1, "prior_stride": None, "min_size": 1, "default_halo": 0,
                "tiling": {"mode": "whole-image", "reason": "a module without a probda config"},
                "receptive_field": {"unet_radius": None, "prior_radius": None}, "latent_dim": 0, "maps": list(FLOAT_MAPS)}
    cfg = model.config
    punet = isinstance(model, PUNet)
    unet_r, prior_r = cfg.receptive_field() if punet else receptive_radius(cfg.depth, cfg.convs_per_block)
    s = cfg.size_multiple
    tiling, why = cfg.tiling if punet else (("approximate", "align_corners=True") if cfg.align_corners else ("exact", ""))
    return {
        "kind": "punet" if punet else "unet",
        "size_multiple": s,
        # prior trunk cell j reads input pixels from prior_stride * j on (Backend.prior_sum)
        "prior_stride": cfg.prior_stride if punet else None,
        "min_size": model.min_side() if punet else s,
        "tiling": {"mode": tiling, "reason": why},
        "receptive_field": {"unet_radius": unet_r, "prior_radius": prior_r if punet else None},
        "default_halo": -(-max(unet_r, prior_r if punet else 0) // s) * s,
        "latent_dim": cfg.latent_dim if punet else 0,
        # per-pixel maps: foreground mean, consensus, std (+ mean object-boundary probability)
        "maps": [*FLOAT_MAPS, *([BOUNDARY_MAP] if output_classes(model) == 2 else [])],
    }


def output_classes(model: nn.Module) -> int:
    """Outputs of a probda model: 1 (foreground) or 2 (foreground, object boundaries: `probda train --boundaries`)."""
    return model.config.num_classes if isinstance(model, PUNet) else model.config.out_channels


class TorchBackend(Backend):
    """A probda PUNet or UNet module (or a checkpoint's) on torch.

    Args:
        module: probda PUNet / TorchEmPUNet / UNet.
        name: for reports (the checkpoint path).
        device: cpu or cuda (resolved by the caller).
        samples: default K.
        normalization: the checkpoint's normalisation (default: whole-image zero mean, unit variance).
        consensus: rule and thresholds (default: those of a default export).
    """

    def __init__(self, module: nn.Module, *, name: str = "", device: str = "cpu", samples: int = 16,
                 normalization: dict | None = None, consensus: dict | None = None):
        self.device = device
        self.module = module.to(device).eval()
        self.folder = Path(name or type(module).__name__)
        spec = {**runtime_spec(module), "default_samples": samples if isinstance(module, PUNet) else 1,
                "consensus": dict(consensus or consensus_spec()), "normalization": dict(normalization or NORMALIZATION)}
        super().__init__(spec, ProviderReport(device, (f"torch {torch.__version__} ({device})",)))

    def _tensor(self, window: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(window)).to(self.device)

    @torch.no_grad()
    def prior_sum(self, window: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        return self.owned_sum(self.module.prior.trunk(self._tensor(window)).float().cpu().numpy(), tile)

    @torch.no_grad()
    def latents_from_sums(self, sums: np.ndarray, count: int, eps: np.ndarray) -> np.ndarray:
        pooled = torch.from_numpy((sums / max(count, 1)).astype(np.float32)).to(self.device)
        mu, log_sigma = (t.float().cpu().numpy() for t in self.module.prior.head(pooled))
        return (mu[None] + np.exp(log_sigma)[None] * np.asarray(eps, np.float32)[:, None, :]).astype(np.float32)

    @torch.no_grad()
    def predict_tile(self, window: np.ndarray, tile: Tile, z: np.ndarray | None, shape: tuple[int, int], *,
                     samples: bool = False) -> dict[str, np.ndarray]:
        core = (slice(None), slice(None), *tile.clipped_core(shape))
        x = self._tensor(window)
        if self.kind == "punet":
            feats = self.module.unet(x)[core]
            both = torch.sigmoid(self.module.fcomb.sample(feats, torch.from_numpy(z).to(self.device)))[:, 0]
        else:
            both = torch.sigmoid(self.module(x))[core]  # (1, C, h, w): one "sample"
        both = both.float().cpu().numpy()
        probs = both[:, 0]
        c = self.consensus_cfg
        maps = reduce_samples(probs, rule=c["rule"], high=c["threshold_high"], low=c["threshold_low"])
        if BOUNDARY_MAP in self.maps:
            maps[BOUNDARY_MAP] = both[:, 1].mean(0)
        if samples:
            maps["samples"] = probs
        return maps
