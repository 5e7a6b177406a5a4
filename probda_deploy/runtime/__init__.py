"""Runtime for exported models: numpy + onnxruntime only (never imports torch).

    from probda_deploy.runtime import OnnxSampler, segment
    sampler = OnnxSampler("model.probda", device="auto")
    maps = sampler.predict(image, k=16, seed=0)   # prob, consensus, std (H, W) float32
    report = segment(sampler, ["./tifs"], "./seg", samples=16)

Modules: `sampler.py` (the export's graphs, public per-window operations),
`tiling.py` (exact tiles with a halo), `predict.py` (the one per-image engine),
`sinks.py` (TIFF, OME-Zarr, memory), `batch.py` (files -> outputs), `outputs.py` (output names, clashes),
`executors.py` (local, Dask), `readers.py` (lazy image reads).
"""

from .batch import FileResult, SegmentOptions, SegmentReport, resolve_options, segment, segment_files
from .consensus import consensus, reduce_samples
from .executors import LocalExecutor, open_executor
from .manifest import load_manifest
from .outputs import OUTPUTS
from .predict import predict_image
from .sampler import OnnxSampler, SamplerRef, latent_eps, load_sampler
from .session import ProviderReport, create_session
from .sinks import MemorySink, TiffSink, ZarrSink
from .tiling import Tile, plan_tiles

__all__ = [
    "OUTPUTS", "FileResult", "LocalExecutor", "MemorySink", "OnnxSampler", "ProviderReport", "SamplerRef", "SegmentOptions",
    "SegmentReport", "Tile", "TiffSink", "ZarrSink", "consensus", "create_session", "latent_eps", "load_manifest",
    "load_sampler", "open_executor", "plan_tiles", "predict_image", "reduce_samples", "resolve_options", "segment",
    "segment_files",
]
