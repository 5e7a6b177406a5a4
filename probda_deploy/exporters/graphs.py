"""The torch modules that become the exported graphs, and the hand-built prior head.

Graphs of a PUNet export (all with dynamic batch, height and width):
    encoder.onnx     image (B, 1, H, W) -> features (B, C, H, W)
    prior.onnx       image (B, 1, H, W) -> prior_features (B, Cp, H/s, W/s), the prior
                     net's trunk before its global mean (s = 2**(depth-1)); the runtime
                     sums the map over each tile's own cells, so the mean tiles exactly
    prior_head.onnx  pooled (B, Cp) -> mu, log_sigma (B, L): the 1x1 conv as a Gemm
    decoder.onnx     features (B, C, H, W), z (K, B, L) -> prob, consensus, std (B, 1, H, W)
                     and probs (K, B, 1, H, W) of the foreground (+ boundary (B, 1, H, W), the
                     mean object-boundary probability, for models trained with --boundaries)
A UNet export is one graph, model.onnx: image -> prob (B, 1, H, W) (+ boundary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ..method import reduce_samples


class EncoderGraph(nn.Module):
    """image (B, 1, H, W), H and W multiples of 2**(depth-1) -> UNet features (B, C, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.unet = model.unet

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.unet(image)


class PriorTrunkGraph(nn.Module):
    """image (B, 1, H, W) -> prior trunk map (B, Cp, H/s, W/s), before the global mean."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.prior = model.prior

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.prior.trunk(image)


class DecoderGraph(nn.Module):
    """fcomb for K latents (`Fcomb.sample_stacked`) with the reductions of `method.reduce_samples` fused."""

    def __init__(self, model: nn.Module, consensus: dict):
        super().__init__()
        self.fcomb = model.fcomb
        self.rule, self.high, self.low = consensus["rule"], consensus["threshold_high"], consensus["threshold_low"]

    def forward(self, features: torch.Tensor, z: torch.Tensor):
        both = torch.sigmoid(self.fcomb.sample_stacked(features, z))  # (K, B, classes, H, W)
        probs = both[:, :, :1]  # foreground
        maps = reduce_samples(probs, rule=self.rule, high=self.high, low=self.low)
        if both.shape[2] > 1:  # boundary model: + mean probability of an object boundary
            return maps["prob"], maps["consensus"], maps["std"], probs, both[:, :, 1:2].mean(dim=0)
        return maps["prob"], maps["consensus"], maps["std"], probs


class UNetGraph(nn.Module):
    """Plain UNet: image (B, 1, H, W) -> foreground probability (B, 1, H, W) (+ boundary probability)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.unet, self.last_layer = model.unet, model.last_layer

    def forward(self, image: torch.Tensor):
        prob = torch.sigmoid(self.last_layer(self.unet(image)))
        return (prob[:, :1], prob[:, 1:2]) if prob.shape[1] > 1 else prob


def write_prior_head(conv: nn.Conv2d, latent_dim: int, path: Path, *, opset: int) -> None:
    """The prior's 1x1 conv on pooled features as a Gemm: pooled (B, Cp) -> mu, log_sigma (B, L).

    Built directly with onnx.helper: it is one affine map, and building it takes
    milliseconds where a traced export takes seconds.
    """
    weight = conv.weight.detach().cpu().numpy()[:, :, 0, 0].astype(np.float32)  # (2L, Cp)
    bias = conv.bias.detach().cpu().numpy().astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["pooled", "head_weight", "head_bias"], ["params"], transB=1),
        helper.make_node("Split", ["params", "split_sizes"], ["mu", "log_sigma"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "prior_head",
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", latent_dim]) for n in ("mu", "log_sigma")],
        initializer=[
            numpy_helper.from_array(weight, "head_weight"),
            numpy_helper.from_array(bias, "head_bias"),
            numpy_helper.from_array(np.array([latent_dim, latent_dim], np.int64), "split_sizes"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="probda")
    proto.ir_version = min(proto.ir_version, 10)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


