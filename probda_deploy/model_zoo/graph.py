"""A deterministic single-graph PUNet for the bioimage.io model zoo.

The zoo runs one graph per weights format: image -> (mean foreground
probability, consensus, std). The K noise draws eps_k ~ N(0, I) are drawn
once with probda's seed rule (`method.latent_eps`) and stored as a constant buffer, so every runtime
(onnxruntime, TorchScript) reproduces the package's test outputs exactly.

Inside the graph (docs/method.md, "The model" and "Pseudo-labels and consensus"):
    F = unet(x) once, (mu, log_sigma) = prior(x) once,
    z_k = mu + exp(log_sigma) * eps_k,
    logits_k = fcomb_tail(W_F F + W_z z_k + b)   (algebraic split of the first 1x1 conv),
    s_k = sigmoid(logits_k); mean, consensus, std over k.

The same K draws are used for every batch item (a baked constant cannot depend
on the dynamic batch size); for B = 1 this equals `PUNet.sample_logits` with
`eps[:, None, :]`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExportError
from ..method import check_samples, consensus_spec, latent_eps, reduce_samples
from ..models.punet import PUNet


EPS_NAME = "bioimageio"  # the name the package's draws are keyed by (`method.latent_eps`)


def draw_eps(samples: int, latent_dim: int, *, seed: int) -> torch.Tensor:
    """The package's (K, L) float32 draws: `method.latent_eps(seed, "bioimageio", K, L)`, the one seed rule."""
    return torch.from_numpy(latent_eps(seed, EPS_NAME, samples, latent_dim))


class ZooGraph(nn.Module):
    """(B, C_in, H, W) standardised image -> mean, consensus, std, each (B, classes, H, W).

    H and W should be multiples of `size_multiple` (2**(depth-1)); other sizes
    are reflect-padded at the bottom/right inside the graph and cropped back.
    """

    def __init__(self, model: PUNet, *, samples: int = 16, seed: int = 0, consensus: dict | None = None):
        super().__init__()
        if not isinstance(model, PUNet):
            raise ExportError(f"bioimage.io export needs a PUNet, got {type(model).__name__}; export UNets as ONNX instead")
        check_samples(samples, least=2)  # consensus and std need two
        c = consensus or consensus_spec()
        self.rule, self.high, self.low = c["rule"], c["threshold_high"], c["threshold_low"]
        self.unet = model.unet
        self.prior = model.prior
        self.fcomb = model.fcomb
        self.size_multiple = model.config.size_multiple
        self.register_buffer("eps", draw_eps(samples, model.config.latent_dim, seed=seed))

    def sample_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) padded image -> sigmoid samples (K, B, classes, H, W)."""
        feats = self.unet(x)
        mu, log_sigma = self.prior(x)
        z = mu[None] + torch.exp(log_sigma)[None] * self.eps[:, None, :]  # (K, B, L)
        return torch.sigmoid(self.fcomb.sample_stacked(feats, z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2], x.shape[-1]
        m = self.size_multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect")
        maps = reduce_samples(self.sample_probs(xp)[..., :h, :w], rule=self.rule, high=self.high, low=self.low)
        return maps["prob"], maps["consensus"], maps["std"]


def reference_outputs(model: PUNet, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid of `PUNet.sample_logits` for eps (K, L) shared by every batch item: (B, classes, H, W)."""
    eps_kbl = eps[:, None, :].expand(-1, x.shape[0], -1)
    return torch.sigmoid(model.sample_logits(x, eps=eps_kbl)).mean(dim=0)
