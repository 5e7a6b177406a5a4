"""The one batch layer: files, folders, globs and `.zarr` images -> TIFF or OME-Zarr outputs.

    report = segment_files(inputs, options, executor)

Every image goes through `predict.predict_image` into a sink (sinks.py); which
files an input writes is `outputs.py`. The executor decides where work runs:
with a Dask executor TIFF files are the units of work (one task per file) and
an OME-Zarr image is split into blocks spread over the workers. Latents come
from `latent_eps(seed, file name, K, L, slice)`, so results do not depend on
input order or on how the work is split. A bad input becomes one failed
FileResult and the batch goes on. `segment` is the one-call form used by the
CLI (load the model, resolve options, open an executor).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, ProbdaError
from . import ome_zarr as oz
from .executors import LocalExecutor, check_workers, open_executor
from .instances import InstanceConfig, ObjectSummary, instance_config
from ..method import (ALL_MAPS, CLASS_THRESHOLD, DEFAULT_OUTPUTS, FLOAT_MAPS, INSTANCE_OUTPUTS, OUTPUT_FORMATS, PREDICT_NORMALIZATIONS, check_choice, check_samples,
                      latent_eps)
from .outputs import (check_outputs, choose_format, output_paths, parse_outputs,
                      remove_stale_temps, tiff_outputs)
from .predict import predict_image
from .readers import list_inputs, open_image
from .onnx_backend import OnnxBackend, BackendRef, load_export
from .preview import write_preview
from .sinks import TiffSink, ZarrSink

log = logging.getLogger(__name__)

PREVIEW_SIDE = 1024  # OME-Zarr sinks keep a preview of at most this side in memory


@dataclass
class FileResult:
    """Outcome for one input: status "done", "skipped" (resume) or "failed"."""

    path: Path
    status: str
    error: str = ""
    seconds: float = 0.0
    shape: tuple[int, ...] = ()
    outputs: tuple[Path, ...] = ()
    format: str = "tif"
    blocks: tuple[int, int] = (0, 0)  # OME-Zarr: (blocks written now, total)
    preview: Path | None = None  # OUT/preview/NAME.png when previews were asked for
    objects: ObjectSummary | None = None  # with the object table: count, flagged uncertain, the least certain rows


@dataclass
class SegmentReport:
    """What a batch did, for the summary."""

    model: Path
    kind: str
    out_dir: Path
    device: str
    providers: list[str]
    provider_note: str
    samples: int
    requested_format: str = "auto"
    engine: str = "single process"
    formats: dict[str, str] = field(default_factory=dict)  # {input: "tif" | "ome-zarr"}
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0
    tiling_note: str = ""  # OnnxBackend.tiling_note: set when tiles are not exact for this model

    def _count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def done(self) -> int:
        return self._count("done")

    @property
    def skipped(self) -> int:
        return self._count("skipped")

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def blocks(self) -> dict[str, tuple[int, int]]:
        """{OME-Zarr output: (blocks written now, total)}."""
        return {str(r.outputs[0]): r.blocks for r in self.results if r.format == "ome-zarr" and r.status == "done"}

    @property
    def images_per_second(self) -> float:
        busy = sum(r.seconds for r in self.results if r.status == "done")
        return self.done / busy if busy > 0 else 0.0


@dataclass(frozen=True)
class SegmentOptions:
    """What every image of a batch is segmented with, resolved against the model (see `resolve_options`)."""

    model: BackendRef
    out_dir: Path
    samples: int
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    threshold: float = 0.5
    seed: int = 0
    tile: int | None | str = "auto"
    halo: int = 0
    normalize: str = "image"
    fmt: str = "auto"
    resume: bool = False
    overwrite: bool = False
    ngff: str = "0.4"
    preview: bool = False
    maps: tuple[str, ...] = FLOAT_MAPS  # what the model predicts (+ boundary)
    instances: InstanceConfig = InstanceConfig()  # seeded watershed of the instance outputs (threshold = `threshold`)

    def numbers(self) -> dict:
        """The options that define an OME-Zarr output's numbers (stored in it, checked on --resume)."""
        instances = bool(set(INSTANCE_OUTPUTS) & set(self.outputs))  # the instance pass reads every channel
        channels = [n for n in ALL_MAPS if n in self.outputs or (instances and n in self.maps)]
        numbers = {"samples": self.samples, "seed": self.seed, "tile": self.tile, "halo": self.halo, "normalize": self.normalize,
                   "threshold": self.threshold, "channels": channels,
                   "mask": "mask" in self.outputs, "instances": instances, "ngff": self.ngff}
        own = (self.instances.seed_height, self.instances.min_size, self.instances.split)
        if instances and own != (InstanceConfig.seed_height, InstanceConfig.min_size, InstanceConfig.split):
            numbers.update(seed_height=own[0], min_size=own[1], split=own[2])
        return numbers


def resolve_options(backend: OnnxBackend, out_dir: str | Path, *, samples: int | None = None,
                    outputs: str | Sequence[str] = DEFAULT_OUTPUTS, threshold: float | None = None, seed: int = 0,
                    tile: int | None | str = "auto", halo: int | None = None, normalize: str = "image", fmt: str = "auto",
                    resume: bool = False, overwrite: bool = False, ngff: str = "0.4", preview: bool = False,
                    seed_height: float = InstanceConfig.seed_height, min_size: int = InstanceConfig.min_size,
                    split: float = InstanceConfig.split) -> SegmentOptions:
    """Check the user's options and fill the model's defaults (K, threshold and halo from the manifest).

    `seed_height`, `min_size` and `split` set the instance separation (`InstanceConfig`) of the instance outputs.

    Raises:
        ConfigError: unknown outputs, format or normalisation, negative sizes, K < 1,
            --resume with --overwrite, labels (connected components) with --format ome-zarr.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    check_choice("--format", fmt, OUTPUT_FORMATS)
    check_choice("--normalize", normalize, PREDICT_NORMALIZATIONS)
    if isinstance(tile, int) and tile < 0 or halo is not None and halo < 0:
        raise ConfigError(f"--tile {tile} / --halo {halo}: sizes must be >= 0")
    k = check_samples(backend.default_samples if samples is None else samples)
    outputs = parse_outputs(outputs)
    if fmt == "ome-zarr" and "labels" in outputs:
        raise ConfigError("--outputs labels: connected components are not written to OME-Zarr; use instances or --format tif")
    if "boundary" in outputs and "boundary" not in backend.maps:
        raise ConfigError(f"--outputs boundary: {backend.folder} has no boundary output; train the model with `probda train --boundaries`")
    threshold = float(backend.manifest.get("threshold", CLASS_THRESHOLD) if threshold is None else threshold)
    instances = (instance_config(threshold, seed_height, min_size, split) if set(INSTANCE_OUTPUTS) & set(outputs)
                 else InstanceConfig(threshold=threshold, seed_height=seed_height, min_size=min_size, split=split))
    return SegmentOptions(
        model=backend.ref(), out_dir=Path(out_dir), samples=k if backend.kind == "punet" else 1, outputs=outputs,
        threshold=threshold, seed=seed, tile=tile, halo=backend.default_halo if halo is None else halo,
        normalize=normalize, fmt=fmt, resume=resume, overwrite=overwrite, ngff=ngff, preview=preview, maps=backend.maps,
        instances=instances)


def segment_file(path: Path, options: SegmentOptions, fmt: str, executor=None, *,
                 on_progress: Callable[[int, int], None] | None = None) -> FileResult:
    """Segment one input into its TIFFs or its OME-Zarr; every problem becomes a failed FileResult.

    Args:
        path: the input.
        options: from `resolve_options`.
        fmt: "tif" or "ome-zarr".
        executor: runs the passes of this image (default: LocalExecutor).
        on_progress: on_progress(done, total) over the tiles/blocks of the image.
    """
    executor = executor or LocalExecutor()
    targets = output_paths(path, fmt, options)
    if options.resume and all(t.exists() for t in targets):
        return FileResult(path, "skipped", outputs=targets, format=fmt)
    t0 = time.perf_counter()
    try:
        ref = options.model if not executor.distributed else BackendRef(options.model.folder, options.model.device, executor.threads)
        image = open_image(path, in_memory=fmt == "tif")
        shape = tuple(image.shape)
        nplanes = shape[0] if len(shape) == 3 else 1
        backend = ref.open()
        eps = [latent_eps(options.seed, path.name, options.samples, backend.latent_dim, slice_index=z)
               if backend.kind == "punet" else None for z in range(nplanes)]
        sink = _sink(path, shape, fmt, options, backend)
        source = str(path) if executor.distributed else image
        blocks = predict_image(ref, source, sink, eps=eps, tile=options.tile, halo=options.halo, normalize=options.normalize,
                               executor=executor.labelled(str(path)), check=path, on_progress=on_progress)
        preview = _write_preview(path, sink, image, options) if options.preview else None
        objects = getattr(sink, "object_summary", None)
    except ProbdaError as e:
        return FileResult(path, "failed", str(e) if str(e).startswith(str(path)) else f"{path}: {e}", format=fmt)
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return FileResult(path, "failed", f"{path}: {type(e).__name__}: {msg}", format=fmt)
    return FileResult(path, "done", seconds=time.perf_counter() - t0, shape=shape, outputs=targets, format=fmt,
                      blocks=blocks, preview=preview, objects=objects)


def _write_preview(path: Path, sink, image, options: SegmentOptions) -> Path | None:
    """OUT/preview/NAME.png from the maps in memory (TIFF) or the sink's in-memory preview (OME-Zarr, local runs)."""
    target = options.out_dir / "preview" / f"{output_paths(path, 'tif', options)[0].name.rsplit('_', 1)[0]}.png"
    if isinstance(sink, TiffSink):
        maps = sink.maps
        z = maps["prob"].shape[0] // 2
        mask = (maps["prob"][z] >= options.threshold).astype("uint8")
        return write_preview(target, image if image.ndim == 2 else image[z], mask, maps["consensus"][z])
    if not sink.preview:  # blocks were written by other processes
        return None
    step = sink.preview_step
    small = image[::step, ::step] if image.ndim == 2 else image[image.shape[0] // 2, ::step, ::step]
    return write_preview(target, small, sink.preview["mask"], sink.preview["consensus"])


def segment_files(inputs: str | Path | Sequence[str | Path], options: SegmentOptions, executor=None, *,
                  on_start: Callable[[int], None] | None = None, on_file: Callable[[FileResult], None] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> SegmentReport:
    """Segment files, folders, globs and `.zarr` images as TIFF or OME-Zarr with `executor`.

    Args:
        inputs: files, folders, glob patterns, `.zarr` folders.
        options: from `resolve_options` (model, output folder, K, format...).
        executor: LocalExecutor (default) or DaskExecutor (`executors.open_executor`).
        on_start, on_file: progress callbacks (total files; each result).
        on_progress: on_progress(done, total) over the tiles/blocks of the current image (one process)
            or of the current OME-Zarr image (Dask).

    Returns:
        SegmentReport; failed files are in `report.failed`, never raised.

    Raises:
        ConfigError: output clashes, existing outputs without --resume/--overwrite, an output folder that cannot be made.
    """
    t_start = time.perf_counter()
    executor = executor or LocalExecutor()
    backend = options.model.open()
    files, failures = list_inputs(inputs, zarr=options.fmt != "tif")
    formats = {f: choose_format(f, options.fmt) for f in files}
    check_outputs(files, formats, options)
    report = SegmentReport(
        model=backend.folder, kind=backend.kind, out_dir=options.out_dir, device=backend.provider_report.device,
        providers=backend.providers, provider_note=backend.provider_report.note, tiling_note=backend.tiling_note,
        samples=options.samples, requested_format=options.fmt, engine=executor.description,
        formats={str(f): v for f, v in formats.items()}, results=[FileResult(p, "failed", e) for p, e in failures])
    for r in report.results:
        on_file and on_file(r)
    on_start and on_start(len(files))
    _make_out_dir(options.out_dir)
    remove_stale_temps(options.out_dir, [t for f in files if formats[f] == "tif" for t in output_paths(f, "tif", options)])

    def add(result: FileResult) -> None:
        report.results.append(result)
        on_file and on_file(result)

    tif = [f for f in files if formats[f] == "tif"]
    if executor.distributed and tif:  # whole files are the tasks; each worker runs its file's passes locally
        local = replace(options, model=BackendRef(options.model.folder, options.model.device, executor.threads))
        try:
            for _, result in executor.labelled("segment").run(segment_file, [(str(f), (f, local, "tif")) for f in tif]):
                add(result)
        except ProbdaError as e:
            finished = {r.path for r in report.results}
            for f in tif:
                if f not in finished:
                    add(FileResult(f, "failed", str(e)))
    for f in files:
        if formats[f] == "ome-zarr" or not executor.distributed:
            add(segment_file(f, options, formats[f], executor, on_progress=on_progress))
    report.seconds = time.perf_counter() - t_start
    return report


def _make_out_dir(out_dir: Path) -> None:
    """Create the output folder; a path that is a file or not writable becomes one ConfigError."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output folder ({e.strerror or e}); give a folder path with -o") from None


def segment(model: str | Path | OnnxBackend, inputs: str | Path | Sequence[str | Path], out_dir: str | Path, *,
            workers: int = 1, scheduler: str | None = None, device: str = "auto", threads: int | None = None,
            on_start: Callable[[int], None] | None = None, on_file: Callable[[FileResult], None] | None = None,
            on_progress: Callable[[int, int], None] | None = None, **options) -> SegmentReport:
    """Load the model, resolve the options, open an executor and run `segment_files` (the CLI's one call).

    Args:
        model: export folder, or a loaded OnnxBackend (its folder is what Dask workers load).
        inputs: files, folders, glob patterns, `.zarr` folders.
        out_dir: output folder (created).
        workers: > 1 starts a Dask LocalCluster with that many worker processes.
        scheduler: address of an existing Dask scheduler (tcp://HOST:PORT).
        device, threads: onnxruntime settings.
        on_start, on_file, on_progress: see `segment_files`.
        **options: samples, outputs, threshold, seed, tile, halo, normalize, fmt, resume,
            overwrite, ngff, preview (see `resolve_options`).

    Returns:
        SegmentReport.

    Raises:
        ConfigError: bad options, output clashes, unreachable scheduler.
        RuntimeModelError: invalid export folder.
    """
    check_workers(workers)  # before the model loads
    backend = model if isinstance(model, OnnxBackend) else load_export(model, device=device, threads=threads)
    opts = resolve_options(backend, out_dir, **options)
    with open_executor(workers=workers, scheduler=scheduler, threads=threads) as executor:
        return segment_files(inputs, opts, executor, on_start=on_start, on_file=on_file, on_progress=on_progress)


def _sink(path: Path, shape: tuple[int, ...], fmt: str, options: SegmentOptions, backend: OnnxBackend):
    if fmt == "tif":
        return TiffSink(shape, targets=tiff_outputs(options.out_dir, path, options.outputs), threshold=options.threshold,
                        instances=options.instances)
    tiles = backend.plan(shape[-2:], tile=options.tile, halo=options.halo)
    y0, y1, x0, x1 = tiles[0].core
    chunk = max(y1 - y0, x1 - x0) if len(tiles) == 1 else y1 - y0
    numbers = options.numbers()
    layout = oz.ZarrLayout(shape=shape, chunk=chunk, levels=oz.pyramid_levels(shape, chunk), channels=tuple(numbers["channels"]),
                           mask=numbers["mask"], ngff=options.ngff, instances=numbers["instances"])
    identity = {"model": backend.model_id, "source": path.name, "shape": list(shape), "settings": numbers}
    step = 0
    if options.preview:
        step = max(1, -(-max(shape[-2:]) // PREVIEW_SIDE))
        while chunk % step:  # the step divides the block size, so blocks fill the preview exactly
            step += 1
    final, *table = output_paths(path, fmt, options)
    return ZarrSink(final, layout, options.threshold, identity, resume=options.resume,
                    preview_step=step, instances=options.instances, objects=table[0] if table else None)
