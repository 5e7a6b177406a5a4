"""Prediction backends behind one interface, the runtime's `Sampler`: onnxruntime for export folders, torch for checkpoints.

    backend = load_backend("run/best.pt")            # TorchSampler
    backend = load_backend("model.probda")           # runtime.OnnxSampler
    maps = backend.predict(image, eps=latent_eps(seed, name, K, backend.latent_dim))

Both run through the runtime's one engine (`runtime.predict.predict_image`):
the same standardisation, padding, latent draws, consensus rule and
thresholds, so a checkpoint and its export give the same maps to float
precision (as bioimageio.core runs one model description on several backends).
The torch backend predicts whole images (its prior runs inside the model's
public `sample_logits`), so it plans one window per image. Imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .runtime.consensus import reduce_samples
from .runtime.sampler import OnnxSampler, Sampler
from .runtime.session import ProviderReport
from .runtime.tiling import Tile

log = logging.getLogger(__name__)

# What `export_onnx` writes into a manifest unless told otherwise: a checkpoint and its default export agree.
DEFAULT_CONSENSUS = {"rule": "agree", "threshold_high": 0.9, "threshold_low": 0.1, "class_threshold": 0.5}
DEFAULT_NORMALIZATION = {"mode": "zero_mean_unit_variance", "scope": "image", "eps": 1e-7}


class TorchSampler(Sampler):
    """A PUNet or UNet torch module as a runtime backend (whole images, one window each).

    Args:
        module: probda PUNet / TorchEmPUNet / UNet.
        name: for reports (the checkpoint path).
        device: auto, cpu or cuda (cuda without a GPU falls back to cpu with a warning).
        normalization: the checkpoint's normalisation (default: whole-image zero mean, unit variance).
        consensus: rule and thresholds (default: those of a default export).
    """

    def __init__(self, module: torch.nn.Module, *, name: str = "", device: str = "auto",
                 normalization: dict | None = None, consensus: dict | None = None):
        self.device = _torch_device(device)
        self.module = module.to(self.device).eval()
        self.folder = Path(name or type(module).__name__)
        cfg = getattr(module, "config", None)  # modules without a config: any size, no padding
        multiple = int(getattr(cfg, "size_multiple", 1))
        punet = hasattr(module, "sample_logits")
        spec = {
            "kind": "punet" if punet else "unet", "size_multiple": multiple,
            "latent_dim": cfg.latent_dim if punet else 0, "default_samples": 16,
            "min_size": module.min_side() if punet else multiple,
            "consensus": dict(consensus or DEFAULT_CONSENSUS), "normalization": dict(normalization or DEFAULT_NORMALIZATION),
            "tiling": {"mode": "whole-image", "reason": "torch backend"},
        }
        if int(getattr(cfg, "num_classes", getattr(cfg, "out_channels", 1))) == 2:  # probda train --boundaries
            spec["maps"] = ["prob", "consensus", "std", "boundary"]
        super().__init__(spec, ProviderReport(self.device, (f"torch {torch.__version__}",)))

    def prior_sum(self, window: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        """Nothing to add up: the prior runs on the whole window inside `sample_logits`."""
        return np.zeros((1, 0)), 0

    def latents_from_sums(self, sums: np.ndarray, count: int, eps: np.ndarray) -> np.ndarray:
        """The draws themselves, (K, 1, L): `predict_tile` hands them to `sample_logits` as eps."""
        return np.asarray(eps, dtype=np.float32)[:, None, :]

    @torch.no_grad()
    def predict_tile(self, window: np.ndarray, tile: Tile, z: np.ndarray | None, shape: tuple[int, int], *,
                     samples: bool = False) -> dict[str, np.ndarray]:
        """Maps of the image (the one window): K samples of `sample_logits` (or the UNet), reduced as the export does."""
        x = torch.from_numpy(np.ascontiguousarray(window)).to(self.device)
        if self.kind == "punet":
            both = torch.sigmoid(self.module.sample_logits(x, eps=torch.from_numpy(z).to(self.device)))[:, 0]
        else:
            both = torch.sigmoid(self.module(x))  # (1, C, H, W): one "sample"
        both = both.float().cpu().numpy()[:, :, : shape[0], : shape[1]]
        probs = both[:, 0]
        c = self.consensus_cfg
        maps = reduce_samples(probs, rule=c["rule"], high=c["threshold_high"], low=c["threshold_low"])
        if "boundary" in self.maps:
            maps["boundary"] = both[:, 1].mean(0)
        if samples:
            maps["samples"] = probs
        return maps


def load_backend(model: Any, *, device: str = "auto", threads: int | None = None) -> Sampler:
    """The backend for an export folder (onnxruntime), a checkpoint file or a module (torch).

    Raises:
        CheckpointError: no such checkpoint file or export folder, unreadable checkpoint.
        RuntimeModelError: invalid export folder.
    """
    if isinstance(model, torch.nn.Module):
        return TorchSampler(model, device=device)
    path = Path(model)
    if path.is_dir():
        return OnnxSampler(path, device=device, threads=threads)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or export folder")
    from .models.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(path)
    return TorchSampler(model_from_checkpoint(ckpt), name=str(path), device=device, normalization=ckpt.get("normalization"))


def _torch_device(device: str) -> str:
    device = getattr(device, "value", device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("device cuda requested but no CUDA GPU is available to torch; using cpu")
        return "cpu"
    return device
