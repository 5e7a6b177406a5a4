"""Pick the backend for what the user gives: an export folder runs on onnxruntime, a checkpoint or module on torch.

    backend = load_backend("run/best.pt")            # models.backend.TorchBackend
    backend = load_backend("model.probda")           # runtime.onnx_backend.OnnxBackend
    maps = backend.predict(image, seed=0, name="img.tif")

Both implement `runtime.backend.Backend` and predict through the one engine (`runtime.predict.predict_image`):
the same standardisation, tiling, latent draws (`method.latent_eps`), consensus rule and thresholds, so a
checkpoint and its export give the same maps to float precision. Each engine is imported only when used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .runtime.backend import Backend

log = logging.getLogger(__name__)


def load_backend(model: Any, *, device: str = "auto", threads: int | None = None) -> Backend:
    """The backend for an export folder (onnxruntime), a checkpoint file or a torch module (torch).

    Raises:
        CheckpointError: no such checkpoint file or export folder, unreadable checkpoint.
        RuntimeModelError: invalid export folder.
    """
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.is_dir():
            from .runtime.onnx_backend import OnnxBackend

            return OnnxBackend(path, device=device, threads=threads)
        if not path.exists():
            raise CheckpointError(f"{path}: no such checkpoint file or export folder")
    from .models.backend import TorchBackend
    from .models.checkpoint import load_checkpoint, model_from_checkpoint

    if not isinstance(model, (str, Path)):
        return TorchBackend(model, device=torch_device(device))
    ckpt = load_checkpoint(path)
    return TorchBackend(model_from_checkpoint(ckpt), name=str(path), device=torch_device(device),
                        normalization=ckpt.get("normalization"))


def torch_device(device: str) -> str:
    """auto -> cuda if torch sees a GPU, else cpu; cuda without a GPU falls back to cpu with a warning."""
    import torch

    device = getattr(device, "value", device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("--device cuda requested but no CUDA GPU is available to torch; using cpu")
        return "cpu"
    return device
