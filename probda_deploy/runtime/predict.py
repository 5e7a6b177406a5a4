"""The one per-image engine: stats pass -> prior pass -> latents -> decode pass, written into a sink.

    predict_image(backend, image, sink, eps=[eps], tile=..., halo=..., normalize="image")

serves every path: `OnnxBackend.predict` (a MemorySink), TIFF outputs (a
TiffSink), OME-Zarr outputs of images larger than RAM (a ZarrSink), in one
process or with the passes spread over Dask workers. The passes are tasks of
plain arguments run by an executor (`executors.py`): `backend` is an
OnnxBackend or a BackendRef and `image` an array-like or a path, each task
calls `backend.open()` and reads its own window, so the same functions run
here and on a worker. Only the backend's public per-window API is used.

Per plane of an (H, W) image or a (Z, H, W) stack:
1. stats: mean, std, min, max and NaN/inf count, streamed (`tiling.scan_stats`);
2. prior: the trunk of every tile summed over the cells its core owns, added
   in tile order, and the prior head run once: z (K, 1, L) = mu + sigma * eps
   (windows with the prior trunk's smaller halo);
3. decode: per tile, encoder on the window and decoder on the core, handed to
   `sink.write`. Blocks the sink already holds (`sink.done()`) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..data.io import check_values
from .executors import LocalExecutor
from .readers import open_image, plane
from .tiling import Tile, scan_stats


class Sink(Protocol):
    """Where the maps of an image go, block by block (see sinks.py)."""

    samples: int  # > 0: the sink also wants the K sample maps

    def resume_state(self) -> tuple[list, list] | None:
        """(stats, latents) per plane of an earlier partial run to continue, or None to start afresh."""

    def begin(self, stats: list, latents: list) -> None:
        """Called once the passes before decoding are done (create the output)."""

    def done(self) -> set[str]:
        """Keys of blocks already written."""

    def write(self, key: str, z: int, tile: Tile, maps: dict[str, np.ndarray]) -> None:
        """Store the maps (clipped core of `tile`, plane z); the sink may store them after returning."""

    def flush(self) -> None:
        """Return once every block handed to `write` is stored (also when the run stops early)."""

    def finish(self, executor):
        """Complete the output (passes over the finished maps run as tasks on `executor`); returns what the caller reports."""


def image_shape(image) -> tuple[int, ...]:
    """Shape of an array-like or of the image at a path (pixels not read)."""
    return tuple((open_image(image, warn=False) if isinstance(image, (str, Path)) else image).shape)


def block_key(z: int, index: int) -> str:
    return f"{z}_{index}"


def predict_image(
    backend, image, sink: Sink, *, eps: Sequence[np.ndarray | None], tile: int | None | str = "auto",
    halo: int | None = None, normalize: str = "image", executor=None, check: Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> object:
    """Predict one image (all planes) into `sink`.

    Args:
        backend: OnnxBackend or BackendRef (tasks call `.open()`).
        image: (H, W) or (Z, H, W) array-like, or a path the tasks open lazily.
        sink: MemorySink, TiffSink, ZarrSink...
        eps: (K, L) float32 draws per plane (None entries for UNet exports).
        tile, halo: see OnnxBackend.plan.
        normalize: "image", "tile" or "none".
        executor: runs the tasks (default: LocalExecutor).
        check: refuse NaN/inf or constant images, naming this file.
        on_progress: on_progress(done, total) over prior tiles and blocks.

    Returns:
        (blocks written now, blocks in all); the sink is finished.

    Raises:
        ConfigError: image below the model's minimum size, bad tiling options.
        ImageReadError: NaN/inf or constant image (with `check`).
    """
    executor = executor or LocalExecutor()
    local = backend.open()
    shape = image_shape(image)
    planes = range(shape[0] if len(shape) == 3 else 1)
    tiles = local.plan(shape[-2:], tile=tile, halo=halo)
    blocks = len(tiles) * len(planes)
    progress = _Progress(on_progress, blocks)
    state = sink.resume_state()
    if state is None:
        stats = _stats_pass(executor, image, planes, normalize, check)
        if local.kind == "punet":
            progress.total += blocks
        latents = _prior_pass(executor, backend, local, image, local.prior_tiles(tiles, shape, halo=halo), stats, eps,
                              normalize, progress)
        sink.begin(stats, latents)
    else:
        stats, latents = state
    skip = sink.done()
    jobs = [(block_key(z, i), (backend, image, z, i, t, normalize, stats[z], latents[z], sink))
            for z in planes for i, t in enumerate(tiles) if block_key(z, i) not in skip]
    progress.step(blocks - len(jobs))
    try:
        for _ in executor.run(block_task, jobs):
            progress.step()
    finally:
        sink.flush()
    sink.finish(executor)
    return len(jobs), blocks


class _Progress:
    def __init__(self, fn, total: int):
        self.fn, self.total, self.done = fn, total, 0

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.fn and n:
            self.fn(self.done, self.total)


def _stats_pass(executor, image, planes, normalize: str, check: Path | None) -> list:
    if normalize != "image" and check is None:
        return [None for _ in planes]
    scans = dict(executor.run(stats_task, [(str(z), (image, z)) for z in planes]))
    scans = [scans[str(z)] for z in planes]
    if check is not None:
        check_values(Path(check), nonfinite=sum(s[4] for s in scans), lo=min(s[2] for s in scans), hi=max(s[3] for s in scans))
    return [(s[0], s[1]) if normalize == "image" else None for s in scans]


def _prior_pass(executor, backend, local, image, tiles: list[Tile], stats, eps, normalize: str, progress: _Progress) -> list:
    """z (K, 1, L) float32 per plane, from tile prior sums added in tile order."""
    if local.kind != "punet":
        return [None for _ in stats]
    jobs = [(block_key(z, i), (backend, image, z, t, normalize, stats[z])) for z in range(len(stats)) for i, t in enumerate(tiles)]
    parts = {}
    for name, part in executor.run(prior_task, jobs):
        parts[name] = part
        progress.step()
    out = []
    for z in range(len(stats)):
        sums, count = None, 0
        for i in range(len(tiles)):
            part, n = parts[block_key(z, i)]
            sums, count = (part if sums is None else sums + part), count + n
        out.append(local.latents_from_sums(sums, count, eps[z]))
    return out


# ------------------------------------------------------------------ tasks
def _plane(image, z: int):
    if isinstance(image, (str, Path)):
        image = open_image(image, warn=False)
    if image.ndim == 2:
        return image
    return image[z] if isinstance(image, np.ndarray) else plane(image, z)


def stats_task(image, z: int) -> tuple[float, float, float, float, int]:
    """(mean, std, min, max, NaN/inf count) of plane z, streamed."""
    return scan_stats(_plane(image, z))


def prior_task(backend, image, z: int, tile: Tile, normalize: str, stats) -> tuple[np.ndarray, int]:
    """Prior trunk of one tile summed over the cells it owns: ((1, C) float64, cell count)."""
    s = backend.open()
    return s.prior_sum(s.window_input(_plane(image, z), tile, normalize=normalize, stats=stats), tile)


def block_task(backend, image, z: int, index: int, tile: Tile, normalize: str, stats, latents, sink: Sink) -> str:
    """Predict one tile core of plane z and hand it to the sink; returns the block's key."""
    s = backend.open()
    img = _plane(image, z)
    window = s.window_input(img, tile, normalize=normalize, stats=stats)
    maps = s.predict_tile(window, tile, latents, tuple(img.shape[-2:]), samples=bool(sink.samples))
    key = block_key(z, index)
    sink.write(key, z, tile, maps)
    return key
