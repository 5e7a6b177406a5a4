"""Batch segmentation of image files with an export folder (numpy + onnxruntime).

Per input `NAME.ext`: `NAME_mask.tif` (uint8 0/1), `NAME_prob.tif`,
`NAME_consensus.tif`, `NAME_std.tif` (float32), `NAME_labels.tif` (connected
components of the mask, uint16/uint32). 3D stacks are segmented slice by slice
into 3D outputs. Every file is written atomically (temp + rename); a bad input
becomes one failed result and the batch goes on. The K latent draws of an image
come from `latent_eps(seed, file name, K, L, slice)`, so results do not depend
on the order of the inputs or on how a batch is split.
"""

from __future__ import annotations

import glob
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..data.io import list_images, read_image, write_tiff_atomic
from ..errors import ConfigError, ProbdaError
from .sampler import NORMALIZE, OnnxSampler, latent_eps

log = logging.getLogger(__name__)

OUTPUTS = ("mask", "prob", "consensus", "std", "labels")
DEFAULT_OUTPUTS = ("mask", "prob", "consensus", "std")


@dataclass
class FileResult:
    """Outcome for one input: status "done", "skipped" (resume) or "failed"."""

    path: Path
    status: str
    error: str = ""
    seconds: float = 0.0
    shape: tuple[int, ...] = ()
    outputs: tuple[Path, ...] = ()


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
    results: list[FileResult] = field(default_factory=list)
    seconds: float = 0.0

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
    def images_per_second(self) -> float:
        busy = sum(r.seconds for r in self.results if r.status == "done")
        return self.done / busy if busy > 0 else 0.0


def parse_outputs(spec: str | Sequence[str]) -> tuple[str, ...]:
    """"mask,prob" -> ("mask", "prob").

    Raises:
        ConfigError: unknown or empty output names.
    """
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [n for n in names if n not in OUTPUTS]
    if bad or not names:
        raise ConfigError(f"--outputs {','.join(names) or spec!r}: unknown {', '.join(bad) or 'empty list'}; choose from {','.join(OUTPUTS)}")
    return tuple(dict.fromkeys(names))


def output_paths(out_dir: Path, image: Path, outputs: Iterable[str]) -> dict[str, Path]:
    """{"mask": OUT/NAME_mask.tif, ...} for an input file."""
    return {kind: Path(out_dir) / f"{image.stem}_{kind}.tif" for kind in outputs}


def segment_files(
    model: str | Path | OnnxSampler,
    inputs: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    samples: int | None = None,
    tile: int | None | str = "auto",
    halo: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    threshold: float | None = None,
    seed: int = 0,
    resume: bool = False,
    overwrite: bool = False,
    normalize: str = "image",
    on_start: Callable[[int], None] | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
) -> SegmentReport:
    """Segment files, folders and globs into `out_dir`.

    Args:
        model: export folder (or an OnnxSampler already loaded).
        inputs: files, folders or glob patterns.
        out_dir: output folder (created).
        samples: K (default: the manifest's).
        tile, halo, normalize: see OnnxSampler.predict.
        device, threads: onnxruntime settings.
        outputs: subset of OUTPUTS.
        threshold: mask threshold on the mean probability (default: manifest, 0.5).
        seed: base seed of the per-image latent draws.
        resume: skip inputs whose outputs all exist.
        overwrite: replace existing outputs.
        on_start, on_file, on_tile: progress callbacks (total files; each result; tiles).

    Returns:
        SegmentReport; failed files are in `report.failed`, never raised.

    Raises:
        ConfigError: bad options, output name clashes, existing outputs without
            --resume/--overwrite.
        RuntimeModelError: invalid export folder.
    """
    t_start = time.perf_counter()
    outputs = parse_outputs(outputs)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    if normalize not in NORMALIZE:
        raise ConfigError(f"--normalize {normalize}: choose one of {', '.join(NORMALIZE)}")
    if isinstance(tile, int) and tile < 0 or halo is not None and halo < 0:
        raise ConfigError(f"--tile {tile} / --halo {halo}: sizes must be >= 0")
    sampler = model if isinstance(model, OnnxSampler) else OnnxSampler(model, device=device, threads=threads)
    k = sampler.default_samples if samples is None else int(samples)
    if k < 1:
        raise ConfigError(f"--samples {k}: need at least 1 sample")
    threshold = float(sampler.manifest.get("threshold", 0.5) if threshold is None else threshold)
    out_dir = Path(out_dir)
    files, results = _expand(inputs)
    _check_clashes(files, out_dir, outputs, resume=resume, overwrite=overwrite)
    report = SegmentReport(
        model=sampler.folder, kind=sampler.kind, out_dir=out_dir, device=sampler.provider_report.device,
        providers=sampler.providers, provider_note=sampler.provider_report.note,
        samples=k if sampler.kind == "punet" else 1, results=results,
    )
    for r in results:
        if on_file:
            on_file(r)
    if on_start:
        on_start(len(files))
    out_dir.mkdir(parents=True, exist_ok=True)
    opts = dict(k=k, tile=tile, halo=halo, normalize=normalize, threshold=threshold, seed=seed, on_tile=on_tile)
    for path in files:
        result = _segment_one(sampler, path, out_dir, outputs, resume=resume, **opts)
        report.results.append(result)
        if on_file:
            on_file(result)
    report.seconds = time.perf_counter() - t_start
    return report


def _expand(inputs) -> tuple[list[Path], list[FileResult]]:
    """Each input expanded on its own: a missing one fails alone."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    failures: list[FileResult] = []
    for item in inputs:
        try:
            files += [f for f in list_images(item) if f not in files]
        except ProbdaError as e:
            failures.append(FileResult(Path(item), "failed", str(e)))
    return files, failures


def _check_clashes(files: list[Path], out_dir: Path, outputs, *, resume: bool, overwrite: bool) -> None:
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ConfigError(f"{stems[f.stem]} and {f}: both would write {out_dir}/{f.stem}_*.tif; segment them into separate output folders")
        stems[f.stem] = f
    if resume or overwrite:
        return
    existing = [p for f in files for p in output_paths(out_dir, f, outputs).values() if p.exists()]
    if existing:
        raise ConfigError(
            f"{out_dir}: {len(existing)} output file(s) already exist (e.g. {existing[0].name}); "
            f"pass --resume to skip finished images or --overwrite to replace them"
        )


def _remove_stale_temps(paths: Iterable[Path]) -> None:
    """Delete temp files a killed run left behind for these outputs."""
    for p in paths:
        for tmp in glob.glob(str(p.parent / f".{glob.escape(p.name)}.*.tmp")):
            Path(tmp).unlink(missing_ok=True)
            log.info("%s: removed leftover temp file of an interrupted run", tmp)


def _segment_one(sampler: OnnxSampler, path: Path, out_dir: Path, outputs, *, resume: bool, **opts) -> FileResult:
    targets = output_paths(out_dir, path, outputs)
    _remove_stale_temps(targets.values())
    if resume and all(p.exists() for p in targets.values()):
        return FileResult(path, "skipped", outputs=tuple(targets.values()))
    t0 = time.perf_counter()
    try:
        image = read_image(path)
        maps = segment_image(sampler, image, name=path.name, outputs=outputs, **opts)
        for kind, target in targets.items():
            write_tiff_atomic(target, maps[kind], compression="zlib", photometric="minisblack")
    except ProbdaError as e:
        return FileResult(path, "failed", str(e))
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        return FileResult(path, "failed", f"{path}: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
    return FileResult(path, "done", seconds=time.perf_counter() - t0, shape=tuple(image.shape), outputs=tuple(targets.values()))


def segment_image(
    sampler: OnnxSampler, image: np.ndarray, *, name: str, outputs=DEFAULT_OUTPUTS, k: int, seed: int = 0,
    threshold: float = 0.5, tile="auto", halo=None, normalize="image", on_tile=None,
) -> dict[str, np.ndarray]:
    """Output maps of one (H, W) image or (Z, H, W) stack, segmented slice by slice.

    Returns:
        {output name: array of the image's shape}: mask uint8, prob/consensus/std
        float32, labels uint16 or uint32 (2D connected components per slice).
    """
    stack = image[None] if image.ndim == 2 else image
    slices = []
    for z, plane in enumerate(stack):
        eps = latent_eps(seed, name, k, sampler.latent_dim, slice_index=z) if sampler.kind == "punet" else None
        slices.append(sampler.predict(plane, eps=eps, tile=tile, halo=halo, normalize=normalize, on_tile=on_tile))
    maps = {key: np.stack([s[key] for s in slices]) for key in ("prob", "consensus", "std")}
    maps["mask"] = (maps["prob"] >= threshold).astype(np.uint8)
    if "labels" in outputs:
        maps["labels"] = _label(maps["mask"])
    return {key: (v[0] if image.ndim == 2 else v) for key, v in maps.items() if key in outputs}


def _label(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connectivity within each slice) of (Z, H, W) uint8."""
    from scipy import ndimage

    labels, offset = [], 0
    for plane in mask:
        lab, n = ndimage.label(plane, structure=np.ones((3, 3), bool))
        labels.append(lab)
        offset = max(offset, n)
    out = np.stack(labels)
    return out.astype(np.uint16 if offset < 2**16 else np.uint32)
