"""Named model variants and construction from a (class, config) spec."""

from __future__ import annotations

from dataclasses import asdict, fields

from torch import nn

from ..errors import ConfigError
from .punet import PUNet, PUNetConfig
from .torch_em_unet import TorchEmPUNet, TorchEmPUNetConfig
from .unet import UNet, UNetConfig

MODEL_CLASSES = {
    "PUNet": (PUNet, PUNetConfig),
    "UNet": (UNet, UNetConfig),
    "TorchEmPUNet": (TorchEmPUNet, TorchEmPUNetConfig),  # imported torch-em checkpoints
}

MODEL_VARIANTS = {
    "punet": ("PUNet", PUNetConfig()),
    "punet-small": ("PUNet", PUNetConfig.small()),
    "punet-small-fast": ("PUNet", PUNetConfig.small_fast()),
    "unet": ("UNet", UNetConfig()),
    "unet-small": ("UNet", UNetConfig.small()),
}


def build_model(variant: str, **overrides) -> nn.Module:
    """Build a named variant (`punet`, `punet-small`, `unet`, `unet-small`).

    Raises:
        ConfigError: unknown variant or option.
    """
    if variant not in MODEL_VARIANTS:
        raise ConfigError(f"unknown model '{variant}'; choose one of {', '.join(MODEL_VARIANTS)}")
    cls_name, cfg = MODEL_VARIANTS[variant]
    return model_from_spec(cls_name, {**asdict(cfg), **overrides})


def model_from_spec(cls_name: str, config: dict) -> nn.Module:
    """Rebuild a model from its class name and config dict (as stored in checkpoints)."""
    if cls_name not in MODEL_CLASSES:
        raise ConfigError(f"unknown model class '{cls_name}'; expected one of {', '.join(MODEL_CLASSES)}")
    cls, cfg_cls = MODEL_CLASSES[cls_name]
    known = {f.name for f in fields(cfg_cls)}
    unknown = set(config) - known
    if unknown:
        raise ConfigError(f"unknown {cls_name} option(s): {', '.join(sorted(unknown))}")
    return cls(cfg_cls(**config))


def model_spec(model: nn.Module) -> tuple[str, dict]:
    """(class name, config dict) of a probda model."""
    for name, (cls, _) in MODEL_CLASSES.items():
        if type(model) is cls:
            return name, asdict(model.config)
    raise ConfigError(f"not a probda model: {type(model).__name__}")
