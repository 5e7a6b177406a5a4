"""Batch segmentation with a choice of output format (TIFF / OME-Zarr) and engine (one process / Dask).

`segment_scaled` is the batch driver (`segment.segment_files` is its TIFF-only, one-process form):
- format "tif" writes `NAME_*.tif` (segment.segment_one); "ome-zarr" writes
  `NAME.ome.zarr` block by block (blockwise.segment_to_zarr); "auto" picks
  OME-Zarr for zarr inputs and images above ZARR_AUTO_PIXELS, TIFF otherwise;
- workers > 1 or a scheduler address runs on Dask: TIFF files are the units of
  work (one task per file), an OME-Zarr image is split into blocks spread over
  the workers. Latents come from (seed, file name, slice), so every split
  writes the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ConfigError, ProbdaError
from . import ome_zarr as oz
from .blockwise import SamplerRef, register_sampler, segment_to_zarr, settings_for
from .chunked import image_shape, is_zarr_path, list_inputs
from .sampler import OnnxSampler
from .segment import FileResult, SegmentOptions, SegmentReport, check_clashes, remove_stale_temps, resolve_options, segment_one

log = logging.getLogger(__name__)

FORMATS = ("auto", "tif", "ome-zarr")
ZARR_AUTO_PIXELS = 4096 * 4096  # above this many pixels (all planes), "auto" writes OME-Zarr


def zarr_output(out_dir: Path, image: Path) -> Path:
    """OUT/NAME.ome.zarr for an input (NAME without .ome/.zarr suffixes)."""
    name = image.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = image.stem
    return Path(out_dir) / f"{name}{oz.SUFFIX}"


def choose_format(path: Path, fmt: str) -> str:
    """"tif" or "ome-zarr" for one input (reads only the header for TIFF/zarr)."""
    if fmt != "auto":
        return fmt
    if is_zarr_path(path):
        return "ome-zarr"
    try:
        shape = image_shape(path)
    except ProbdaError:
        return "tif"  # the read error is reported by the segmentation itself
    pixels = 1
    for s in shape:
        pixels *= int(s)
    return "ome-zarr" if pixels > ZARR_AUTO_PIXELS else "tif"


def segment_path(sampler: OnnxSampler, ref: SamplerRef, path: Path, out_dir: Path, opts: SegmentOptions, *, fmt: str,
                 runner=None, on_block=None, on_zarr=None, on_tile=None) -> FileResult:
    """Segment one input into TIFFs or one OME-Zarr; errors become a failed FileResult.

    `on_zarr(info)` receives segment_to_zarr's info dict (blocks, written, levels) of an OME-Zarr output.
    """
    if fmt == "tif":
        return segment_one(sampler, path, out_dir, opts, on_tile=on_tile)
    final = zarr_output(out_dir, path)
    if opts.resume and final.is_dir():
        return FileResult(path, "skipped", outputs=(final,))
    t0 = time.perf_counter()
    try:
        settings = settings_for(sampler, samples=opts.samples, seed=opts.seed, tile=opts.tile, halo=opts.halo,
                                normalize=opts.normalize, threshold=opts.threshold,
                                outputs=tuple(o for o in opts.outputs if o != "labels"), ngff=opts.ngff)
        info = segment_to_zarr(ref, path, final, settings=settings, resume=opts.resume, runner=runner, on_block=on_block)
        if on_zarr:
            on_zarr(info)
    except ProbdaError as e:
        return FileResult(path, "failed", str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        return FileResult(path, "failed", f"{path}: {type(e).__name__}: {str(e).strip()[:200]}")
    return FileResult(path, "done", seconds=time.perf_counter() - t0, shape=tuple(info["shape"]), outputs=(final,))


def segment_scaled(
    model: str | Path | OnnxSampler,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    fmt: str = "auto",
    workers: int = 1,
    scheduler: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    on_block: Callable[[int, int], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    **options,
) -> SegmentReport:
    """Segment files, folders, globs and `.zarr` images, as TIFF or OME-Zarr, locally or on Dask.

    Args:
        model: export folder (or a loaded OnnxSampler; its folder is what Dask workers load).
        inputs: files, folders, glob patterns, `.zarr` folders.
        out_dir: output folder (created).
        fmt: "auto", "tif" or "ome-zarr".
        workers: > 1 starts a LocalCluster with that many worker processes.
        scheduler: address of an existing Dask scheduler (tcp://HOST:PORT).
        device, threads: onnxruntime settings.
        on_start, on_file: progress callbacks (total files; each result).
        on_block: on_block(done, total) for the blocks of the current OME-Zarr image.
        on_tile: on_tile(done, total) for the tiles of the current TIFF-output image (one process).
        **options: samples, outputs, threshold, seed, tile, halo, normalize, resume,
            overwrite, ngff (see segment.resolve_options).

    Returns:
        SegmentReport (failed files in `report.failed`) with extra attributes: `formats`
        {input: "tif" | "ome-zarr"}, `engine` (a sentence), `blocks` {OME-Zarr output: (written, total)}.

    Raises:
        ConfigError: bad options, output clashes without --resume/--overwrite, unreachable scheduler.
    """
    t_start = time.perf_counter()
    _check_options(fmt, workers)
    sampler = model if isinstance(model, OnnxSampler) else OnnxSampler(model, device=device, threads=threads)
    opts = resolve_options(sampler, **options)
    out_dir = Path(out_dir)
    files, failures = list_inputs(inputs, zarr=fmt != "tif")
    formats = {f: choose_format(f, fmt) for f in files}
    if fmt == "ome-zarr" and "labels" in opts.outputs:
        raise ConfigError("--outputs labels: connected components are not written to OME-Zarr; drop labels or use --format tif")
    tif = [f for f in files if formats[f] == "tif"]
    check_clashes(tif, out_dir, opts)
    _check_zarr_clashes([f for f in files if formats[f] == "ome-zarr"], out_dir, resume=opts.resume, overwrite=opts.overwrite)
    report = SegmentReport(
        model=sampler.folder, kind=sampler.kind, out_dir=out_dir, device=sampler.provider_report.device,
        providers=sampler.providers, provider_note=sampler.provider_report.note, tiling_note=sampler.tiling_note,
        samples=opts.samples if sampler.kind == "punet" else 1, results=[FileResult(p, "failed", e) for p, e in failures],
    )
    report.formats = {str(f): v for f, v in formats.items()}
    report.engine = "single process"
    report.requested_format = fmt
    report.blocks = {}
    for r in report.results:
        on_file and on_file(r)
    on_start and on_start(len(files))
    _make_out_dir(out_dir)
    remove_stale_temps(out_dir, tif, opts.outputs)

    def on_zarr(info: dict) -> None:
        report.blocks[str(info["path"])] = (info["written"], info["blocks"])

    use_dask = bool(scheduler) or workers > 1
    with _engine(use_dask, workers, scheduler, threads) as (client, task_threads):
        ref = SamplerRef(str(sampler.folder), device, task_threads if use_dask else threads)
        register_sampler(sampler, ref)
        if not use_dask:
            for path in files:
                result = segment_path(sampler, ref, path, out_dir, opts, fmt=formats[path], on_block=on_block,
                                      on_zarr=on_zarr, on_tile=on_tile)
                _add(report, result, on_file)
        else:
            report.engine = f"dask: {scheduler}" if scheduler else f"dask LocalCluster, {workers} workers x {task_threads} threads"
            _run_dask(client, sampler, ref, files, formats, out_dir, opts, report, on_file, on_block, on_zarr)
    report.seconds = time.perf_counter() - t_start
    return report


def _check_options(fmt: str, workers: int) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: need at least 1 worker")


def _make_out_dir(out_dir: Path) -> None:
    """Create the output folder; a path that is a file or not writable becomes one ConfigError."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out_dir}: cannot create the output folder ({e.strerror or e}); give a folder path with -o") from None


def _check_zarr_clashes(files: list[Path], out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    targets: dict[Path, Path] = {}
    for f in files:
        t = zarr_output(out_dir, f)
        if t in targets:
            raise ConfigError(f"{targets[t]} and {f}: both would write {t}; segment them into separate output folders")
        targets[t] = f
    existing = [t for t in targets if t.exists()]
    if existing and overwrite:
        for t in existing:
            shutil.rmtree(t)
    elif existing and not resume:
        raise ConfigError(f"{out_dir}: {len(existing)} OME-Zarr output(s) already exist (e.g. {existing[0].name}); "
                          f"pass --resume to skip finished images or --overwrite to replace them")


@contextlib.contextmanager
def _engine(use_dask: bool, workers: int, scheduler: str | None, threads: int | None):
    if not use_dask:
        yield None, threads
        return
    from .distributed import open_client

    with open_client(workers=workers, scheduler=scheduler, threads=threads) as pair:
        yield pair


def _add(report: SegmentReport, result: FileResult, on_file) -> None:
    report.results.append(result)
    if on_file:
        on_file(result)


def _run_dask(client, sampler, ref, files, formats, out_dir, opts: SegmentOptions, report, on_file, on_block, on_zarr) -> None:
    """TIFF files as tasks (all at once); OME-Zarr images one after the other, their blocks as tasks."""
    from .distributed import DaskRunner, file_task

    tif = [f for f in files if formats[f] == "tif"]
    runner = DaskRunner(client, label="segment")
    by_name = {str(f): f for f in tif}
    try:
        for _, result in runner.run(file_task, [(str(f), (ref, str(f), str(out_dir), "tif", opts)) for f in tif]):
            _add(report, result, on_file)
    except ProbdaError as e:
        done = {str(r.path) for r in report.results}
        for name in by_name:
            if name not in done:
                _add(report, FileResult(by_name[name], "failed", str(e)), on_file)
    for f in files:
        if formats[f] == "ome-zarr":
            result = segment_path(sampler, ref, f, out_dir, opts, fmt="ome-zarr", runner=DaskRunner(client, label=str(f)),
                                  on_block=on_block, on_zarr=on_zarr)
            _add(report, result, on_file)
