"""Building blocks shared by the UNet and the PUNet's Gaussian encoders.

Parameter names (`layers`, `conv_block`) follow the layout of the paper's
reference checkpoints, so those state dicts load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def init_conv(module: nn.Module) -> None:
    """He-normal weights, near-zero biases (the reference initialisation)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.trunc_normal_(module.bias, std=1e-3, a=-2e-3, b=2e-3)


def init_orthogonal(module: nn.Module) -> None:
    """Orthogonal weights, near-zero biases (used for fcomb and the Gaussian heads)."""
    if isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.trunc_normal_(module.bias, std=1e-3, a=-2e-3, b=2e-3)


class ConvBlock(nn.Module):
    """Optional 2x average pooling, then `n_convs` x (conv3x3, ReLU)."""

    def __init__(self, in_ch: int, out_ch: int, *, pool: bool, n_convs: int = 3, padding: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        if pool:
            layers.append(nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True))
        for i in range(n_convs):
            layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=padding), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.layers.apply(init_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class UpBlock(nn.Module):
    """Bilinear x2 upsampling, concat with the skip, then 3 x (conv3x3, ReLU).

    `align_corners=True` reproduces the reference code; it makes the network
    depend on the absolute image size, so tiled prediction is only exact with
    `align_corners=False` (probda's default for new models).
    """

    def __init__(self, in_ch: int, out_ch: int, *, n_convs: int = 3, align_corners: bool = False):
        super().__init__()
        self.align_corners = align_corners
        self.conv_block = ConvBlock(in_ch, out_ch, pool=False, n_convs=n_convs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=self.align_corners)
        return self.conv_block(torch.cat([up, skip], dim=1))


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right to multiples of `multiple`.

    Reflect padding where the image is large enough, replicate otherwise
    (reflection needs the pad to be smaller than the side).

    Returns:
        The padded tensor and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def receptive_radius(depth: int, convs_per_block: int) -> tuple[int, int]:
    """Upper bounds of the receptive-field radius (input pixels) of the UNet and the prior trunk.

    conv3x3 at level j adds 2**j; a 2x2 average pool from level j adds 2**j; a
    bilinear x2 upsampling into level j adds 2**(j+1).

    Returns:
        (unet_radius, prior_trunk_radius).
    """
    down = sum(convs_per_block * 2**j for j in range(depth)) + sum(2**j for j in range(depth - 1))
    up = sum(2 ** (j + 1) + convs_per_block * 2**j for j in range(depth - 1))
    return down + up, down
