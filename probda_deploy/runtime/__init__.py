"""Runtime for exported models: numpy + onnxruntime only (never imports torch).

    from probda_deploy.runtime import OnnxSampler, segment_files
    sampler = OnnxSampler("model.probda", device="auto")
    maps = sampler.predict(image, k=16, seed=0)   # prob, consensus, std (H, W) float32
"""

from .consensus import consensus, reduce_samples
from .manifest import load_manifest
from .sampler import OnnxSampler, latent_eps, load_sampler
from .segment import OUTPUTS, FileResult, SegmentReport, segment_files
from .session import ProviderReport, create_session
from .tiling import Tile, plan_tiles

__all__ = [
    "OUTPUTS", "FileResult", "OnnxSampler", "ProviderReport", "SegmentReport", "Tile", "consensus",
    "create_session", "latent_eps", "load_manifest", "load_sampler", "plan_tiles", "reduce_samples", "segment_files",
]
