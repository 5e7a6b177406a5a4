"""Segment one large image block by block into OME-Zarr, in one process or on a Dask cluster.

The work of an image is split into the runtime's tiles (blocks = tile cores):
1. whole-image (per plane) mean/std, streamed from the lazily opened input;
2. prior trunk sums per tile (small float64 vectors), added in tile order,
   the prior head run once: the K latents z, shared by every block;
3. per block: encoder on the window, decoder over the core, written straight
   into the output's chunks (all pyramid levels) plus a completion marker.
This is the arithmetic of `OnnxSampler.predict(tile=...)`, so the OME-Zarr
level 0 equals the in-memory tiled result exactly, however blocks are spread.
Tasks are module-level functions of plain arguments (a `SamplerRef` instead of
a session), so Dask can ship them; each process builds its sampler once.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..data.io import check_values
from ..errors import ConfigError
from . import ome_zarr as oz
from .chunked import open_image, plane
from .sampler import OnnxSampler, latent_eps
from .tiling import Tile, read_window, scan_stats

log = logging.getLogger(__name__)

_SAMPLERS: dict[tuple, OnnxSampler] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class SamplerRef:
    """How a process finds (or builds once) its sampler: export folder, device, intra-op threads."""

    folder: str
    device: str = "auto"
    threads: int | None = None


def cached_sampler(ref: SamplerRef) -> OnnxSampler:
    """The process-wide OnnxSampler for `ref` (sessions created once per process)."""
    key = (str(Path(ref.folder).resolve()), ref.device, ref.threads)
    with _LOCK:
        if key not in _SAMPLERS:
            _SAMPLERS[key] = OnnxSampler(ref.folder, device=ref.device, threads=ref.threads)
        return _SAMPLERS[key]


def register_sampler(sampler: OnnxSampler, ref: SamplerRef) -> None:
    """Make an already loaded sampler the cached one for `ref` (single-process runs)."""
    with _LOCK:
        _SAMPLERS[(str(Path(ref.folder).resolve()), ref.device, ref.threads)] = sampler


@dataclass(frozen=True)
class BlockSettings:
    """Options that define the numbers of an output (stored in the output, checked on --resume)."""

    samples: int
    seed: int
    tile: int | None | str
    halo: int
    normalize: str
    threshold: float
    channels: tuple[str, ...]
    mask: bool
    ngff: str = "0.4"


class LocalRunner:
    """Runs tasks one after the other in this process."""

    def run(self, fn: Callable, jobs: list[tuple[str, tuple]]) -> Iterator[tuple[str, object]]:
        for name, args in jobs:
            yield name, fn(*args)


# ------------------------------------------------------------------ tasks
def stats_task(image_path: str, z: int) -> tuple[float, float, float, float, int]:
    """(mean, std, min, max, NaN/inf count) of plane z, streamed.

    Always run (whatever the normalisation): `_prepare` refuses NaN/inf pixels and
    constant images from these numbers before any output exists.
    """
    return scan_stats(plane(open_image(image_path, warn=False), z))


def _window(sampler: OnnxSampler, image, t: Tile, normalize: str, stats) -> np.ndarray:
    raw = read_window(image, t.window, multiple=sampler.multiple)
    x = sampler._standardize(raw, normalize, stats) if normalize == "image" else sampler._standardize(raw, normalize)
    return x[None, None]


def prior_task(ref: SamplerRef, image_path: str, z: int, tile: Tile, normalize: str, stats) -> tuple[np.ndarray, int]:
    """Prior trunk of one tile summed over the cells it owns: ((1, C) float64, cell count)."""
    sampler = cached_sampler(ref)
    x = _window(sampler, plane(open_image(image_path, warn=False), z), tile, normalize, stats)
    return sampler.prior_sum(x, tile)


def block_task(ref: SamplerRef, image_path: str, out: str, layout: oz.ZarrLayout, z: int, index: int, tile: Tile,
               settings: BlockSettings, stats, latents) -> str:
    """Predict one block and write it (all levels) into `out`; returns its key."""
    sampler = cached_sampler(ref)
    image = plane(open_image(image_path, warn=False), z)
    maps = predict_block(sampler, image, tile, normalize=settings.normalize, stats=stats, z=latents)
    maps["mask"] = (maps["prob"] >= settings.threshold).astype(np.uint8)
    origin = ((z,) if len(layout.shape) == 3 else ()) + (tile.core[0], tile.core[2])
    key = block_key(z, index)
    oz.write_block(Path(out), layout, key=key, origin=origin, maps=maps)
    return key


def predict_block(sampler: OnnxSampler, image, t: Tile, *, normalize: str, stats, z) -> dict[str, np.ndarray]:
    """prob, consensus, std (h, w) float32 of one tile core (clipped to the image)."""
    h, w = image.shape
    y0, y1, x0, x1 = t.core
    y1, x1 = min(y1, h), min(x1, w)
    wy, wx = t.window[0], t.window[2]
    x = _window(sampler, image, t, normalize, stats)
    if sampler.kind == "unet":
        p = sampler._sessions["model"].run(["prob"], {"image": x})[0][0, 0, y0 - wy : y1 - wy, x0 - wx : x1 - wx]
        return {k: v[0] for k, v in sampler._unet_maps(p[None, None]).items()}
    feats = sampler._sessions["encoder"].run(["features"], {"image": x})[0]
    core = feats[:, :, y0 - wy : y1 - wy, x0 - wx : x1 - wx]
    out = {n: np.zeros((y1 - y0, x1 - x0), np.float32) for n in ("prob", "consensus", "std")}
    sampler._decode_chunks(core, np.asarray(z, dtype=np.float32), ["prob", "consensus", "std"], out, (0, 0))
    return out


def block_key(z: int, index: int) -> str:
    return f"{z}_{index}"


# ------------------------------------------------------------ the driver
def plan_blocks(sampler: OnnxSampler, shape: tuple[int, ...], *, tile, halo: int | None) -> tuple[list[Tile], int]:
    """Tiles of one plane and the level-0 chunk size (the tile core size)."""
    tiles = sampler.plan(shape[-2:], tile=tile, halo=halo)
    y0, y1, x0, x1 = tiles[0].core
    return tiles, (max(y1 - y0, x1 - x0) if len(tiles) == 1 else y1 - y0)


def _model_id(sampler: OnnxSampler) -> str:
    return hashlib.sha256((sampler.folder / "manifest.json").read_bytes()).hexdigest()[:16]


def _latents(runner, ref, sampler, image_path, shape, tiles, settings, stats) -> list:
    """z (K, 1, L) float32 per plane, from tile prior sums added in tile order."""
    if sampler.kind != "punet":
        return [None] * len(stats)
    name = Path(image_path).name
    jobs = [(f"{z}_{i}", (ref, image_path, z, t, settings.normalize, stats[z])) for z in range(len(stats)) for i, t in enumerate(tiles)]
    parts = dict(runner.run(prior_task, jobs))
    out = []
    for z in range(len(stats)):
        sums, count = None, 0
        for i in range(len(tiles)):
            part, n = parts[f"{z}_{i}"]
            sums, count = (part if sums is None else sums + part), count + n
        eps = latent_eps(settings.seed, name, settings.samples, sampler.latent_dim, slice_index=z)
        out.append(sampler.latents_from_sums(sums, count, eps))
    return out


def _prepare(runner, ref, sampler, image_path, final: Path, shape, tiles, chunk, settings, resume: bool):
    """Create (or reopen with --resume) the partial output; returns (partial, layout, stats, latents)."""
    partial = oz.partial_path(final)
    nplanes = shape[0] if len(shape) == 3 else 1
    layout = oz.ZarrLayout(shape=tuple(shape), chunk=chunk, levels=oz.pyramid_levels(shape, chunk),
                           channels=settings.channels, mask=settings.mask, ngff=settings.ngff)
    want = {"model": _model_id(sampler), "source": Path(image_path).name, "shape": list(shape), "settings": _jsonable(settings)}
    if resume and partial.is_dir():
        meta = oz.read_metadata(partial)
        if {k: meta.get(k) for k in want} == want:
            stats = [tuple(s) if s is not None else None for s in meta["stats"]]
            lat = [np.asarray(v, dtype=np.float32) if v is not None else None for v in meta["latents"]]
            return partial, layout, stats, lat
        raise ConfigError(f"{partial}: written with other settings or another model; remove it or pass --overwrite to start again")
    if partial.exists():
        log.info("%s: removing the partial output of an earlier run (no --resume)", partial)
        shutil.rmtree(partial)
    scans = [s for _, s in sorted(runner.run(stats_task, [(str(z), (image_path, z)) for z in range(nplanes)]), key=lambda kv: int(kv[0]))]
    check_values(Path(image_path), nonfinite=sum(s[4] for s in scans), lo=min(s[2] for s in scans), hi=max(s[3] for s in scans))
    stats = [(s[0], s[1]) if settings.normalize == "image" else None for s in scans]
    lat = _latents(runner, ref, sampler, image_path, shape, tiles, settings, stats)
    meta = {**want, "stats": [list(s) if s is not None else None for s in stats],
            "latents": [v.tolist() if v is not None else None for v in lat]}
    oz.create_output(partial, layout, metadata=meta)
    return partial, layout, stats, lat


def _jsonable(settings: BlockSettings) -> dict:
    d = asdict(settings)
    d["channels"] = list(d["channels"])
    return d


def segment_to_zarr(
    ref: SamplerRef, image_path: str | Path, final: str | Path, *, settings: BlockSettings,
    resume: bool = False, runner=None, on_block: Callable[[int, int], None] | None = None,
) -> dict:
    """Segment one image into `final` (`NAME.ome.zarr`) block by block.

    Args:
        ref: the export to use (the caller may `register_sampler` a loaded one).
        image_path: `.zarr`, TIFF, PNG/JPEG; opened lazily.
        final: output folder; written as `final.partial` and renamed when complete.
        settings: numbers-defining options (K, seed, tile, halo, ...).
        resume: reuse a partial output with the same settings; redo only unmarked blocks.
        runner: LocalRunner (default) or distributed.DaskRunner.
        on_block: called as on_block(done, total) after each block.

    Returns:
        {"path", "shape", "blocks", "written", "levels"}.

    Raises:
        ConfigError: a partial output with different settings under --resume.
        ImageReadError: unreadable input.
    """
    runner = runner or LocalRunner()
    sampler = cached_sampler(ref)
    image_path, final = str(image_path), Path(final)
    shape = tuple(open_image(image_path).shape)
    tiles, chunk = plan_blocks(sampler, shape, tile=settings.tile, halo=settings.halo)
    partial, layout, stats, lat = _prepare(runner, ref, sampler, image_path, final, shape, tiles, chunk, settings, resume)
    done = oz.done_blocks(partial)
    planes = range(shape[0] if len(shape) == 3 else 1)
    total = len(tiles) * len(planes)
    jobs = [
        (block_key(z, i), (ref, image_path, str(partial), layout, z, i, t, settings, stats[z], lat[z]))
        for z in planes for i, t in enumerate(tiles) if block_key(z, i) not in done
    ]
    finished = total - len(jobs)
    if on_block and finished:
        on_block(finished, total)
    for _ in runner.run(block_task, jobs):
        finished += 1
        if on_block:
            on_block(finished, total)
    oz.finalize(partial, final)
    return {"path": final, "shape": shape, "blocks": total, "written": len(jobs), "levels": layout.levels}


def settings_for(sampler: OnnxSampler, *, samples: int, seed: int, tile, halo, normalize: str, threshold: float,
                 outputs: Iterable[str], ngff: str = "0.4") -> BlockSettings:
    """BlockSettings from segment options; `labels` is not available for OME-Zarr.

    Raises:
        ConfigError: labels requested.
    """
    outputs = tuple(outputs)
    if "labels" in outputs:
        raise ConfigError("--outputs labels: connected components are not written to OME-Zarr; drop labels or use --format tif")
    return BlockSettings(
        samples=samples if sampler.kind == "punet" else 1, seed=seed, tile=tile,
        halo=sampler.default_halo if halo is None else halo, normalize=normalize, threshold=float(threshold),
        channels=tuple(n for n in oz.FLOAT_CHANNELS if n in outputs), mask="mask" in outputs, ngff=ngff,
    )
