"""Models: UNet, PUNet, variants, checkpoints."""

from .punet import PUNet, PUNetConfig, kl_diag_gaussians
from .registry import MODEL_VARIANTS, build_model, model_from_spec
from .unet import UNet, UNetConfig

__all__ = [
    "MODEL_VARIANTS", "PUNet", "PUNetConfig", "UNet", "UNetConfig",
    "build_model", "kl_diag_gaussians", "model_from_spec",
]
