"""Probabilistic UNet (Kohl et al. 2018) as used by Archit & Pape 2023.

docs/method.md, "The model": a UNet trunk gives features F; a prior net p(z|x) and a
posterior net q(z|x,y) give diagonal Gaussians over a small latent z; `fcomb`
(1x1 convs) maps concat(F, z) to logits. Module names follow the reference
checkpoint layout (`unet.`, `prior.encoder.layers.N`, `prior.conv_layer`,
`fcomb.layers.N`, `fcomb.last_layer`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .blocks import init_conv, init_orthogonal, pad_to_multiple, receptive_radius
from .unet import UNetTrunk


@dataclass(frozen=True)
class PUNetConfig:
    """PUNet hyper-parameters; defaults are the paper's configuration."""

    in_channels: int = 1
    num_classes: int = 1
    depth: int = 4
    initial_features: int = 64
    latent_dim: int = 6
    n_fcomb: int = 3
    convs_per_block: int = 3
    beta: float = 1.0
    # False: translation-equivariant upsampling, exact tiling. True: reference code.
    align_corners: bool = False
    # Padding of the prior/posterior convs (torch-em's variant uses none).
    gaussian_padding: int = 1
    # Explicit filters per level (reference checkpoints, e.g. [32, 64, 128, 192]);
    # None = initial_features * 2**i. num_filters[0] must equal initial_features.
    num_filters: tuple[int, ...] | None = None
    # Filters per level of the prior and posterior nets; None = the UNet's (paper). They only
    # produce the 6-d latent, so narrower ones keep the UNet, its receptive field and the tiling.
    gaussian_filters: tuple[int, ...] | None = None

    @classmethod
    def small(cls) -> "PUNetConfig":
        """CPU-sized configuration: 16, 32, 64, 128 filters."""
        return replace(cls(), initial_features=16)

    @classmethod
    def small_fast(cls) -> "PUNetConfig":
        """The small configuration with prior and posterior nets at half width (8, 16, 32, 64):
        a training step costs ~0.74x (benchmarks/RESULTS.md, "Training speed")."""
        return replace(cls.small(), gaussian_filters=(8, 16, 32, 64))

    @property
    def filters(self) -> list[int]:
        if self.num_filters is not None:
            return [int(f) for f in self.num_filters]
        return [self.initial_features * 2**i for i in range(self.depth)]

    @property
    def prior_filters(self) -> list[int]:
        """Filters per level of the prior and posterior nets."""
        if self.gaussian_filters is None:
            return self.filters
        if len(self.gaussian_filters) != self.depth:
            raise ConfigError(f"gaussian_filters {list(self.gaussian_filters)} needs one entry per level ({self.depth}, the depth)")
        return [int(f) for f in self.gaussian_filters]

    @property
    def size_multiple(self) -> int:
        return 2 ** (self.depth - 1)

    @property
    def prior_stride(self) -> int:
        """Input pixels per cell of the prior trunk's output."""
        return 2 ** (self.depth - 1)

    @property
    def tiling(self) -> tuple[str, str]:
        """("exact" | "approximate", why) for tiled prediction (see runtime/tiling.py)."""
        if self.align_corners:
            return "approximate", (
                "align_corners=True (reference code) makes the upsampling depend on the window size; "
                "tiles were measured up to 0.13 off the whole-image probability"
            )
        return "exact", ""

    def receptive_field(self) -> tuple[int, int]:
        """(UNet radius, prior trunk radius) in input pixels, upper bounds (blocks.receptive_radius)."""
        return receptive_radius(self.depth, self.convs_per_block)


class GaussianEncoder(nn.Module):
    """Conv encoder -> global mean over H, W -> 1x1 conv -> (mu, log_sigma), each (B, L)."""

    def __init__(self, in_channels: int, filters: list[int], latent_dim: int, *, convs_per_block: int = 3, padding: int = 1):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = _Trunk(in_channels, filters, convs_per_block, padding)
        self.conv_layer = nn.Conv2d(filters[-1], 2 * latent_dim, 1)
        init_orthogonal(self.conv_layer)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map before the global mean: (B, filters[-1], h, w)."""
        return self.encoder(x)

    def head(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, filters[-1]) pooled features -> mu, log_sigma (B, L)."""
        out = self.conv_layer(pooled[:, :, None, None])[:, :, 0, 0]
        return out[:, : self.latent_dim], out[:, self.latent_dim :]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(x).mean(dim=(2, 3)))

    def trunk_side(self, side: int) -> int:
        """Side of the trunk's output map for an input side (< 1: the input is too small)."""
        for layer in self.encoder.layers:
            if isinstance(layer, nn.Conv2d):
                side += 2 * layer.padding[0] - (layer.kernel_size[0] - 1)
            elif isinstance(layer, nn.AvgPool2d):
                side = -(-side // 2)
            if side < 1:
                return side
        return side


class _Trunk(nn.Module):
    """Flat Sequential `layers` (reference layout): [convs, pool, convs, pool, ...].

    `norm(channels)`, if given, adds a normalisation after every conv (torch-em's variant).
    """

    def __init__(self, in_channels: int, filters: list[int], convs_per_block: int, padding: int,
                 norm: Callable[[int], nn.Module] | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, f in enumerate(filters):
            if i > 0:
                layers.append(nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True))
            for j in range(convs_per_block):
                layers.append(nn.Conv2d(prev if j == 0 else f, f, 3, padding=padding))
                if norm is not None:
                    layers.append(norm(f))
                layers.append(nn.ReLU(inplace=True))
            prev = f
        self.layers = nn.Sequential(*layers)
        self.layers.apply(init_conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Fcomb(nn.Module):
    """1x1 conv head on concat(F, z): (C+L)->C, ReLU, ..., C->num_classes."""

    def __init__(self, features: int, latent_dim: int, num_classes: int, n_fcomb: int):
        super().__init__()
        if n_fcomb < 2:
            raise ValueError("n_fcomb must be >= 2")
        layers: list[nn.Module] = [nn.Conv2d(features + latent_dim, features, 1), nn.ReLU(inplace=True)]
        for _ in range(n_fcomb - 2):
            layers += [nn.Conv2d(features, features, 1), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.last_layer = nn.Conv2d(features, num_classes, 1)
        self.features = features
        self.layers.apply(init_orthogonal)
        init_orthogonal(self.last_layer)

    def forward(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """feats (B, C, H, W), z (B, L) -> logits (B, num_classes, H, W)."""
        zmap = z[:, :, None, None].expand(-1, -1, *feats.shape[-2:])
        return self.last_layer(self.layers(torch.cat([feats, zmap], dim=1)))

    def split_first(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First conv as W_F (C_out, C), W_z (C_out, L), b (C_out)."""
        conv = self.layers[0]
        w = conv.weight[:, :, 0, 0]
        return w[:, : self.features], w[:, self.features :], conv.bias

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Everything after the first conv's pre-activation: ReLU, remaining convs."""
        return self.last_layer(self.layers[1:](h))

    def sample_stacked(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """`sample` as one stacked pass of 1x1 convs over (K*B, C, H, W), the form the exported graphs trace.

        W [F; z] + b = W_F F + (W_z z + b): W_F F is one conv over the features, each sample adds a
        per-channel bias, and only the remaining 1x1 convs run K times.
        """
        w_f, w_z, b = self.split_first()
        base = F.conv2d(feats, w_f[:, :, None, None])  # (B, C, H, W), once for all samples
        pre = base[None] + (z @ w_z.T + b)[..., None, None]  # (K, B, C, H, W)
        logits = self.tail(pre.flatten(0, 1))  # (K*B, classes, H, W)
        return logits.unflatten(0, (z.shape[0], z.shape[1]))

    def sample(self, feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits for K latents per image, W_F F computed once: (B, C, H, W), (K, B, L) -> (K, B, classes, H, W).

        The 1x1 convs run as matrix products on (pixels, channels) rows, one
        sample at a time and in place, so each intermediate is one (B, H, W, C)
        buffer; on a CPU this is 9x faster than convs over the (K*B, C, H, W) stack.
        """
        w_f, w_z, b = self.split_first()
        rows = feats.permute(0, 2, 3, 1) @ w_f.T  # (B, H, W, C)
        bias = z @ w_z.T + b  # (K, B, C)
        convs = [m for m in self.layers[1:] if isinstance(m, nn.Conv2d)] + [self.last_layer]
        outs = []
        for k in range(z.shape[0]):
            h = torch.add(rows, bias[k, :, None, None, :]).relu_()
            for i, conv in enumerate(convs):
                h = torch.matmul(h, conv.weight[:, :, 0, 0].T).add_(conv.bias)
                if i < len(convs) - 1:
                    h = h.relu_()
            outs.append(h)
        return torch.stack(outs).permute(0, 1, 4, 2, 3)


class PUNet(nn.Module):
    """Probabilistic UNet. `forward(x, z)` gives logits for given latents."""

    def __init__(self, config: PUNetConfig):
        super().__init__()
        self.config = config
        c = config
        self.unet = UNetTrunk(c.in_channels, c.filters, convs_per_block=c.convs_per_block, align_corners=c.align_corners)
        self.prior = GaussianEncoder(c.in_channels, c.prior_filters, c.latent_dim, convs_per_block=c.convs_per_block,
                                     padding=c.gaussian_padding)
        self.posterior = GaussianEncoder(c.in_channels + c.num_classes, c.prior_filters, c.latent_dim,
                                         convs_per_block=c.convs_per_block, padding=c.gaussian_padding)
        self.fcomb = Fcomb(c.initial_features, c.latent_dim, c.num_classes, c.n_fcomb)

    def min_side(self) -> int:
        """Smallest padded image side (a multiple of size_multiple) the prior encoder accepts.

        The prior trunk must leave at least one cell, two with a norm that
        uses per-image statistics (torch-em refuses one-element instance norms).
        """
        need = 2 if getattr(self.config, "norm", None) in ("InstanceNorm", "GroupNorm") else 1
        side = self.config.size_multiple
        while self.prior.trunk_side(side) < need:
            side += self.config.size_multiple
        return side

    # -- pieces (inputs already padded to a multiple of size_multiple) --
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)

    def prior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.prior(x)

    def posterior_params(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.posterior(torch.cat([x, y], dim=1))

    # -- public API (any H, W) --
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x (B, in, H, W), z (B, L) -> logits (B, classes, H, W)."""
        xp, (h, w) = pad_to_multiple(x, self.config.size_multiple)
        return self.fcomb(self.features(xp), z)[..., :h, :w]

    def sample_logits(self, x: torch.Tensor, *, eps: torch.Tensor | None = None, k: int = 16) -> torch.Tensor:
        """K prior samples, UNet and prior run once.

        The first fcomb conv is linear in concat(F, z), so W_F F is computed once
        and each sample only adds the per-channel bias W_z z_k + b (`Fcomb.sample`).

        Args:
            x: (B, in, H, W) float32.
            eps: (K, B, L) standard normal draws; drawn from the torch RNG if None.
            k: number of samples when eps is None.

        Returns:
            (K, B, classes, H, W) logits.
        """
        xp, (h, w) = pad_to_multiple(x, self.config.size_multiple)
        feats = self.features(xp)
        mu, log_sigma = self.prior_params(xp)
        if eps is None:
            eps = torch.randn(k, *mu.shape, device=x.device, dtype=mu.dtype)
        z = mu[None] + torch.exp(log_sigma)[None] * eps  # (K, B, L)
        out = self.fcomb.sample(feats, z)
        return out[..., :h, :w]


def kl_diag_gaussians(mu_q: torch.Tensor, ls_q: torch.Tensor, mu_p: torch.Tensor, ls_p: torch.Tensor) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians given by mean and log-sigma, summed over L: (B,)."""
    var_q, var_p = torch.exp(2 * ls_q), torch.exp(2 * ls_p)
    kl = ls_p - ls_q + (var_q + (mu_q - mu_p) ** 2) / (2 * var_p) - 0.5
    return kl.sum(dim=-1)
