"""Runtime for exported models: numpy + onnxruntime only (never imports torch).

    from probda_deploy.runtime import OnnxBackend, segment
    backend = OnnxBackend("model.probda", device="auto")
    maps = backend.predict(image, k=16, seed=0, name="img.tif")  # prob, consensus, std (H, W) float32
    report = segment(backend, ["./tifs"], "./seg", samples=16, seed=0)  # the same maps for ./tifs/img.tif

Modules: `backend.py` (the interface every backend implements), `onnx_backend.py` (an export folder's
graphs), `tiling.py` (exact tiles with a halo), `predict.py` (the one per-image engine), `sinks.py` (TIFF,
OME-Zarr, memory), `batch.py` (files -> outputs), `outputs.py` (output names, clashes), `executors.py`
(local, Dask), `readers.py` (lazy image reads).
"""

from importlib import import_module

# name -> module: imported on first use, so that importing one part (e.g. the onnxruntime backend in a
# worker) does not import the writers, scipy or Dask
_EXPORTS = {
    "OUTPUTS": "..method", "consensus": "..method", "latent_eps": "..method", "reduce_samples": "..method",
    "Backend": ".backend", "ProviderReport": ".backend",
    "FileResult": ".batch", "SegmentOptions": ".batch", "SegmentReport": ".batch", "resolve_options": ".batch",
    "segment": ".batch", "segment_files": ".batch",
    "LocalExecutor": ".executors", "open_executor": ".executors",
    "load_manifest": ".manifest",
    "BackendRef": ".onnx_backend", "OnnxBackend": ".onnx_backend", "load_export": ".onnx_backend",
    "predict_image": ".predict",
    "create_session": ".session",
    "MemorySink": ".sinks", "TiffSink": ".sinks", "ZarrSink": ".sinks",
    "Tile": ".tiling", "plan_tiles": ".tiling",
}
_ALIASES = {"OnnxSampler": "OnnxBackend"}  # the class's former name, for scripts written against it
__all__ = sorted([*_EXPORTS, *_ALIASES])


def __getattr__(name: str):
    target = _ALIASES.get(name, name)
    if target not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[target], __name__), target)
