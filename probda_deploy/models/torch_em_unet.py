"""torch-em's Probabilistic UNet variant as a probda model (for imported checkpoints).

torch-em (`torch_em.model.probabilistic_unet.ProbabilisticUNet`, docs/import.md
section 1) differs from the paper's reference network:

- the UNet is torch-em's `UNet2d`: blocks of [norm, conv3x3, ReLU] x 2,
  max-pooling, a bottleneck (`unet.base`) with 2x the deepest filters, and
  upsamplers that interpolate bilinearly (align_corners=False) then apply a
  1x1 conv; the UNet uses only `num_filters[0]` and doubles per level;
- the prior/posterior encoders use unpadded convs, each followed by the norm;
- the posterior sees the label shifted by -0.5 (`segm - 0.5`).

Module names reproduce torch-em's state-dict keys (`unet.encoder.blocks.N.block.M`,
`unet.base.block.M`, `unet.decoder.samplers.N.conv`, `prior.encoder.layers.N`,
`fcomb.layers.N`, `fcomb.last_layer`) so its weights load without renaming.
`TorchEmPUNet` subclasses `PUNet`: `features`, `prior_params`, `forward(x, z)`
and `sample_logits` behave exactly as for probda's own PUNet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..method import TORCH_EM_NORMS
from .punet import Fcomb, GaussianEncoder, PUNet, _Trunk

NORMS = (None, *TORCH_EM_NORMS)


@dataclass(frozen=True)
class TorchEmPUNetConfig:
    """Hyper-parameters of torch-em's ProbabilisticUNet (defaults: torch-em 0.10.9's)."""

    in_channels: int = 1
    num_classes: int = 1
    num_filters: tuple[int, ...] = (32, 64, 128, 192)
    latent_dim: int = 6
    n_fcomb: int = 4
    convs_per_block: int = 3  # prior/posterior encoder (the UNet always has 2)
    norm: str | None = "InstanceNorm"
    num_raters: int = 1
    beta: float = 1.0
    gaussian_padding: int = 0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")

    @property
    def depth(self) -> int:
        return len(self.num_filters)

    @property
    def initial_features(self) -> int:
        return int(self.num_filters[0])

    @property
    def filters(self) -> list[int]:
        """Filters of the prior/posterior encoders."""
        return [int(f) for f in self.num_filters]

    @property
    def unet_filters(self) -> list[int]:
        """Filters of the UNet levels (torch-em doubles from num_filters[0])."""
        return [self.initial_features * 2**i for i in range(self.depth)]

    @property
    def size_multiple(self) -> int:
        """torch-em's UNet pools `depth` times (plus a bottleneck)."""
        return 2**self.depth

    @property
    def align_corners(self) -> bool:
        return False

    @property
    def prior_stride(self) -> int:
        """Input pixels per cell of the prior trunk's output (depth - 1 poolings)."""
        return 2 ** (self.depth - 1)

    @property
    def tiling(self) -> tuple[str, str]:
        """("exact" | "whole-image", why) for tiled prediction of large images.

        InstanceNorm and GroupNorm normalise every layer with statistics of the
        whole image, so a tile's features and prior differ from the whole-image
        ones: such models are run on whole images. With no norm, BatchNorm or
        InstanceNormTrackStats (running statistics in eval mode) every layer is
        local: the UNet tiles exactly with a halo, and the unpadded prior trunk's
        cells are assigned to tiles by their position (see OnnxBackend.prior_sum).
        """
        if self.norm in ("InstanceNorm", "GroupNorm"):
            return "whole-image", (
                f"torch-em {self.norm} normalises each layer with statistics of the whole image, "
                f"so tiles would not reproduce the whole-image result"
            )
        return "exact", ""

    def receptive_field(self) -> tuple[int, int]:
        """(UNet radius, prior trunk extent) in input pixels, upper bounds.

        UNet: conv3x3 at level j adds 2**j, a 2x2 max-pool from level j adds 2**j,
        bilinear x2 into level j adds 2**(j+1); the bottleneck has 2 convs at
        level `depth`. Prior trunk (unpadded convs): its cell j reads input pixels
        [stride * j, stride * j + extent].
        """
        d = self.depth
        down = sum(3 * 2**j for j in range(d)) + 2 * 2**d
        up = sum(2 ** (j + 1) + 2 * 2**j for j in range(d))
        extent = sum(2 * self.convs_per_block * 2**j for j in range(d)) + sum(2**j for j in range(d - 1))
        return down + up, extent


def _spatial_mean(x: torch.Tensor, dims: int = 2) -> torch.Tensor:
    """Mean over the last `dims` axes, one axis at a time (keepdim).

    Mathematically `x.mean(dim=(-2, -1))`. Reducing one axis at a time keeps
    float32 sums short: onnxruntime's one-shot reductions (ReduceMean and its
    InstanceNormalization kernel) accumulate a whole 512 x 512 plane in one
    float32 sum and lost 6e-3 on torch-em features at 512 x 512 (torch: 5e-5).
    """
    for axis in range(-1, -dims - 1, -1):
        x = x.mean(dim=axis, keepdim=True)
    return x


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d (same parameters and state-dict keys) with exportable, precise statistics.

    With input statistics (torch-em's default "InstanceNorm", or training) the
    mean and the two-pass variance are computed axis by axis (`_spatial_mean`);
    with running statistics in eval mode ("InstanceNormTrackStats") it is the
    per-channel affine map torch's kernel computes, written out (the
    TorchScript-based ONNX exporter refuses that kernel for a dynamic batch).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.track_running_stats and not self.training:
            y = (x - self.running_mean[:, None, None]) / torch.sqrt(self.running_var[:, None, None] + self.eps)
        else:
            d = x - _spatial_mean(x)
            y = d / torch.sqrt(_spatial_mean(d * d) + self.eps)
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state-dict keys) with axis-by-axis statistics (see InstanceNorm2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = x.reshape(b, self.num_groups, c // self.num_groups, h, w)
        d = g - _spatial_mean(g, 3)
        y = (d / torch.sqrt(_spatial_mean(d * d, 3) + self.eps)).reshape(b, c, h, w)
        if self.affine:
            y = y * self.weight[:, None, None] + self.bias[:, None, None]
        return y


def norm_layer(norm: str | None, channels: int) -> nn.Module | None:
    """The 2D normalisation torch-em's `get_norm_layer` builds for `norm` (same parameters, exportable forward)."""
    if norm is None:
        return None
    if norm == "InstanceNorm":
        return InstanceNorm2d(channels)
    if norm == "InstanceNormTrackStats":
        return InstanceNorm2d(channels, affine=True, track_running_stats=True, momentum=0.01)
    if norm == "GroupNorm":
        return GroupNorm(min(32, channels), channels)
    if norm == "BatchNorm":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unknown norm {norm!r}")


class _ConvBlock(nn.Module):
    """2 x ([norm], conv3x3 pad 1, ReLU) in a Sequential named `block`."""

    def __init__(self, in_ch: int, out_ch: int, norm: str | None):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in in (in_ch, out_ch):
            if norm is not None:
                layers.append(norm_layer(norm, c_in))
            layers += [nn.Conv2d(c_in, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class _Upsampler(nn.Module):
    """Bilinear x2 (align_corners=False), then a 1x1 conv."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))


class _Encoder(nn.Module):
    def __init__(self, features: list[int], norm: str | None):
        super().__init__()
        self.blocks = nn.ModuleList(_ConvBlock(a, b, norm) for a, b in zip(features[:-1], features[1:]))
        self.poolers = nn.ModuleList(nn.MaxPool2d(2) for _ in self.blocks)


class _Decoder(nn.Module):
    def __init__(self, features: list[int], skips: list[int], norm: str | None):
        super().__init__()
        self.blocks = nn.ModuleList(
            _ConvBlock(out + skip, out, norm) for out, skip in zip(features[1:], skips)
        )
        self.samplers = nn.ModuleList(_Upsampler(a, b) for a, b in zip(features[:-1], features[1:]))


class TorchEmUNetTrunk(nn.Module):
    """torch-em's UNet2d without output conv: (B, in, H, W) -> (B, filters[0], H, W).

    H and W must be multiples of 2**depth.
    """

    def __init__(self, in_channels: int, filters: list[int], norm: str | None):
        super().__init__()
        enc = [in_channels, *filters]
        self.encoder = _Encoder(enc, norm)
        self.base = _ConvBlock(filters[-1], 2 * filters[-1], norm)
        dec = [2 * filters[-1], *filters[::-1]]
        self.decoder = _Decoder(dec, filters[::-1], norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block, pool in zip(self.encoder.blocks, self.encoder.poolers):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.base(x)
        for block, sampler, skip in zip(self.decoder.blocks, self.decoder.samplers, reversed(skips)):
            x = block(torch.cat([sampler(x), skip], dim=1))
        return x


class TorchEmGaussianEncoder(GaussianEncoder):
    """GaussianEncoder (trunk/head/forward inherited) with torch-em's conv-norm-ReLU trunk."""

    def __init__(self, in_channels: int, config: TorchEmPUNetConfig):
        nn.Module.__init__(self)
        self.latent_dim = config.latent_dim
        norm = None if config.norm is None else (lambda channels: norm_layer(config.norm, channels))
        self.encoder = _Trunk(in_channels, config.filters, config.convs_per_block, config.gaussian_padding, norm=norm)
        self.conv_layer = nn.Conv2d(config.filters[-1], 2 * config.latent_dim, 1)


class TorchEmPUNet(PUNet):
    """PUNet with torch-em's UNet and encoders; same API as `PUNet`.

    Weights come from imported checkpoints (`probda import`); probda does not
    initialise this variant for training from scratch.
    """

    def __init__(self, config: TorchEmPUNetConfig):
        nn.Module.__init__(self)
        self.config = c = config
        self.unet = TorchEmUNetTrunk(c.in_channels, c.unet_filters, c.norm)
        self.prior = TorchEmGaussianEncoder(c.in_channels, c)
        self.posterior = TorchEmGaussianEncoder(c.in_channels + c.num_classes * c.num_raters, c)
        self.fcomb = Fcomb(c.initial_features, c.latent_dim, c.num_classes, c.n_fcomb)

    def posterior_params(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y: (B, num_classes * num_raters, H, W) binary or one-hot labels; torch-em centres them (y - 0.5)."""
        return self.posterior(torch.cat([x, y - 0.5], dim=1))
