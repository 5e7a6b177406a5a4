"""Output names of a batch: which files an input writes, in which format, and clashes between them.

Per input `NAME.ext`: `NAME_mask.tif`, `NAME_prob.tif`, `NAME_consensus.tif`,
`NAME_std.tif`, `NAME_labels.tif`, `NAME_instances.tif`, `NAME_objects.csv` (format "tif"), or
`NAME.ome.zarr` (+ `NAME_objects.csv` beside it) ("ome-zarr");
"auto" picks OME-Zarr for zarr inputs and images above ZARR_AUTO_PIXELS.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import ConfigError, ProbdaError
from ..method import OUTPUTS
from . import ome_zarr as oz
from .predict import image_shape
from .readers import is_zarr_path

log = logging.getLogger(__name__)

ZARR_AUTO_PIXELS = 4096 * 4096  # above this many pixels (all planes), "auto" writes OME-Zarr


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


def tiff_outputs(out_dir: Path, image: Path, outputs: Iterable[str]) -> dict[str, Path]:
    """{"mask": OUT/NAME_mask.tif, ..., "objects": OUT/NAME_objects.csv} for an input file."""
    return {kind: Path(out_dir) / f"{image.stem}_{kind}.{'csv' if kind == 'objects' else 'tif'}" for kind in outputs}


def zarr_output(out_dir: Path, image: Path) -> Path:
    """OUT/NAME.ome.zarr for an input (NAME without .ome/.zarr suffixes)."""
    name = image.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return Path(out_dir) / f"{name[: -len(suffix)]}{oz.SUFFIX}"
    return Path(out_dir) / f"{image.stem}{oz.SUFFIX}"


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


def output_paths(path: Path, fmt: str, options) -> tuple[Path, ...]:
    """The outputs one input writes in `fmt` (options: anything with `out_dir` and `outputs`, e.g. SegmentOptions).

    OME-Zarr: (OUT/NAME.ome.zarr,) plus OUT/NAME_objects.csv with the "objects" output.
    """
    if fmt == "ome-zarr":
        zarr = zarr_output(options.out_dir, path)
        table = (zarr.with_name(f"{zarr.name.removesuffix(oz.SUFFIX)}_objects.csv"),) if "objects" in options.outputs else ()
        return (zarr, *table)
    return tuple(tiff_outputs(options.out_dir, path, options.outputs).values())


def check_outputs(files: list[Path], formats: dict[Path, str], options) -> None:
    """Refuse two inputs writing the same outputs, and existing outputs without --resume/--overwrite.

    With --overwrite, existing OME-Zarr outputs are removed (TIFFs are replaced atomically when written).

    Raises:
        ConfigError: a clash.
    """
    owners: dict[Path, Path] = {}
    for f in files:
        for target in output_paths(f, formats[f], options):
            if target in owners:
                what = f"{options.out_dir}/{f.stem}_*.tif" if formats[f] == "tif" else str(target)
                raise ConfigError(f"{owners[target]} and {f}: both would write {what}; segment them into separate output folders")
            owners[target] = f
    existing = [t for t in owners if t.exists()]
    if not existing or options.resume:
        return
    if options.overwrite:
        for t in existing:
            if t.is_dir():
                shutil.rmtree(t)
        return
    raise ConfigError(f"{options.out_dir}: {len(existing)} output(s) already exist (e.g. {existing[0].name}); "
                      f"pass --resume to skip finished images or --overwrite to replace them")


def remove_stale_temps(out_dir: Path, outputs: Iterable[Path]) -> None:
    """Delete temp files (`.NAME_kind.tif.<random>.tmp`) a killed run left for these outputs (one folder scan)."""
    names = {p.name for p in outputs}
    if not Path(out_dir).is_dir():
        return
    for entry in os.scandir(out_dir):
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.name[1:-4].rsplit(".", 1)[0] in names:
            Path(entry.path).unlink(missing_ok=True)
            log.info("%s: removed leftover temp file of an interrupted run", entry.path)
