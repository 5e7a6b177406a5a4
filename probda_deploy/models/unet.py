"""2D UNet of the paper (docs/method.md, "The model"): no normalisation, average pooling,
bilinear upsampling, 3 convs per level."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .blocks import ConvBlock, UpBlock, pad_to_multiple


@dataclass(frozen=True)
class UNetConfig:
    """Plain UNet baseline (trained with dice)."""

    in_channels: int = 1
    out_channels: int = 1
    depth: int = 4
    initial_features: int = 64
    convs_per_block: int = 3
    align_corners: bool = False

    @classmethod
    def small(cls) -> "UNetConfig":
        return replace(cls(), initial_features=16)

    @property
    def filters(self) -> list[int]:
        return [self.initial_features * 2**i for i in range(self.depth)]

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.depth - 1)


class UNetTrunk(nn.Module):
    """Encoder-decoder without the output layer: (B, in, H, W) -> (B, initial_features, H, W).

    H and W must be multiples of 2**(depth-1); `UNet.forward` pads for callers.
    """

    def __init__(self, in_channels: int, filters: list[int], *, convs_per_block: int = 3, align_corners: bool = False):
        super().__init__()
        self.contracting_path = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else filters[i - 1], f, pool=i > 0, n_convs=convs_per_block)
            for i, f in enumerate(filters)
        )
        self.upsampling_path = nn.ModuleList(
            UpBlock(filters[i + 1] + filters[i], filters[i], n_convs=convs_per_block, align_corners=align_corners)
            for i in reversed(range(len(filters) - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, down in enumerate(self.contracting_path):
            x = down(x)
            if i < len(self.contracting_path) - 1:
                skips.append(x)
        for up, skip in zip(self.upsampling_path, reversed(skips)):
            x = up(x, skip)
        return x


class UNet(nn.Module):
    """UNet baseline: trunk + 1x1 conv to `out_channels` logits."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        self.unet = UNetTrunk(
            config.in_channels, config.filters,
            convs_per_block=config.convs_per_block, align_corners=config.align_corners,
        )
        self.last_layer = nn.Conv2d(config.initial_features, config.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) float32, any H/W -> logits (B, out, H, W)."""
        xp, (h, w) = pad_to_multiple(x, self.config.size_multiple)
        return self.last_layer(self.unet(xp))[..., :h, :w]
