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

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..data.io import read_image, write_tiff_atomic
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
    tiling_note: str = ""  # OnnxSampler.tiling_note: set when tiles are not exact for this model

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


@dataclass(frozen=True)
class SegmentOptions:
    """What every image of a batch is segmented with, resolved against the model (see `resolve_options`)."""

    samples: int
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    threshold: float = 0.5
    seed: int = 0
    tile: int | None | str = "auto"
    halo: int | None = None
    normalize: str = "image"
    resume: bool = False
    overwrite: bool = False
    ngff: str = "0.4"


def resolve_options(sampler: OnnxSampler, *, samples: int | None = None, outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
                    threshold: float | None = None, seed: int = 0, tile: int | None | str = "auto", halo: int | None = None,
                    normalize: str = "image", resume: bool = False, overwrite: bool = False, ngff: str = "0.4") -> SegmentOptions:
    """Check the user's options and fill the model's defaults (K and threshold from the manifest).

    Raises:
        ConfigError: unknown outputs or normalisation, negative sizes, K < 1, --resume with --overwrite.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite: choose one")
    if normalize not in NORMALIZE:
        raise ConfigError(f"--normalize {normalize}: choose one of {', '.join(NORMALIZE)}")
    if isinstance(tile, int) and tile < 0 or halo is not None and halo < 0:
        raise ConfigError(f"--tile {tile} / --halo {halo}: sizes must be >= 0")
    k = sampler.default_samples if samples is None else int(samples)
    if k < 1:
        raise ConfigError(f"--samples {k}: need at least 1 sample")
    threshold = float(sampler.manifest.get("threshold", 0.5) if threshold is None else threshold)
    return SegmentOptions(samples=k, outputs=parse_outputs(outputs), threshold=threshold, seed=seed, tile=tile, halo=halo,
                          normalize=normalize, resume=resume, overwrite=overwrite, ngff=ngff)


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
    """Segment files, folders and globs into `NAME_*.tif` outputs in `out_dir`, in this process.

    The TIFF-only, one-process form of `scale.segment_scaled`.

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
    from .scale import segment_scaled

    return segment_scaled(
        model, inputs, out_dir, fmt="tif", workers=1, device=device, threads=threads,
        on_start=on_start, on_file=on_file, on_tile=on_tile,
        samples=samples, tile=tile, halo=halo, outputs=outputs, threshold=threshold, seed=seed,
        resume=resume, overwrite=overwrite, normalize=normalize,
    )


def check_clashes(files: list[Path], out_dir: Path, opts: SegmentOptions) -> None:
    """Refuse two inputs writing the same outputs, and existing outputs without --resume/--overwrite.

    Raises:
        ConfigError: a clash.
    """
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ConfigError(f"{stems[f.stem]} and {f}: both would write {out_dir}/{f.stem}_*.tif; segment them into separate output folders")
        stems[f.stem] = f
    if opts.resume or opts.overwrite:
        return
    existing = [p for f in files for p in output_paths(out_dir, f, opts.outputs).values() if p.exists()]
    if existing:
        raise ConfigError(
            f"{out_dir}: {len(existing)} output file(s) already exist (e.g. {existing[0].name}); "
            f"pass --resume to skip finished images or --overwrite to replace them"
        )


def remove_stale_temps(out_dir: Path, files: list[Path], outputs: Iterable[str]) -> None:
    """Delete temp files (`.NAME_kind.tif.<random>.tmp`) a killed run left for these inputs' outputs (one folder scan)."""
    names = {p.name for f in files for p in output_paths(out_dir, f, outputs).values()}
    if not Path(out_dir).is_dir():
        return
    for entry in os.scandir(out_dir):
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.name[1:-4].rsplit(".", 1)[0] in names:
            Path(entry.path).unlink(missing_ok=True)
            log.info("%s: removed leftover temp file of an interrupted run", entry.path)


def segment_one(sampler: OnnxSampler, path: Path, out_dir: Path, opts: SegmentOptions, *,
                on_tile: Callable[[int, int], None] | None = None) -> FileResult:
    """Segment one file into its TIFF outputs; every problem becomes a failed FileResult."""
    targets = output_paths(out_dir, path, opts.outputs)
    if opts.resume and all(p.exists() for p in targets.values()):
        return FileResult(path, "skipped", outputs=tuple(targets.values()))
    t0 = time.perf_counter()
    try:
        image = read_image(path)
        maps = segment_image(sampler, image, name=path.name, outputs=opts.outputs, k=opts.samples, seed=opts.seed,
                             threshold=opts.threshold, tile=opts.tile, halo=opts.halo, normalize=opts.normalize, on_tile=on_tile)
        for kind, target in targets.items():
            write_tiff_atomic(target, maps[kind], compression="zlib", photometric="minisblack")
    except ProbdaError as e:
        return FileResult(path, "failed", str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
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
