"""Sinks: where the per-image engine (`predict.predict_image`) writes the maps of each block.

- `MemorySink`: (Z, H, W) float32 arrays in memory (`OnnxBackend.predict`).
- `TiffSink`: a MemorySink that writes `NAME_mask.tif`, `NAME_prob.tif`, ...
  (and connected components) atomically when the image is complete.
- `ZarrSink`: one OME-Zarr per image, written block by block (any process, any
  order) into `NAME.ome.zarr.partial/` with completion markers, renamed when
  complete; `--resume` continues a partial output with the same settings.
  It keeps a small preview (mask, consensus, image) in memory while blocks
  are written in this process, so `--preview` never re-reads the output.
  With instances, `finish` labels the output block by block (zarr_instances.py)
  and writes `NAME_objects.csv` next to it.
Adding an output format means adding a sink here.
"""

from __future__ import annotations

import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.io import write_tiff_atomic
from ..errors import ConfigError
from ..method import FLOAT_MAPS
from . import ome_zarr as oz
from .instances import (InstanceConfig, ObjectSummary, iter_rows, label_planes, plane_objects, summarize_objects,
                        write_object_csv)
from .zarr_instances import label_blocks
from .tiling import Tile

log = logging.getLogger(__name__)



class MemorySink:
    """Collect the maps of an (H, W) image or (Z, H, W) stack in memory.

    Args:
        shape: (H, W) or (Z, H, W).
        samples: K to also keep the sample maps (2D only), 0 for none.
    """

    def __init__(self, shape: tuple[int, ...], *, samples: int = 0):
        self.shape = tuple(int(s) for s in shape)
        self.full = self.shape if len(self.shape) == 3 else (1, *self.shape)
        self.maps = {n: np.zeros(self.full, np.float32) for n in FLOAT_MAPS}  # + the model's other maps (boundary)
        self.samples = int(samples)
        if self.samples:
            self.maps["samples"] = np.zeros((self.samples, *self.full[1:]), np.float32)

    def resume_state(self):
        return None

    def begin(self, stats, latents) -> None:
        pass

    def done(self) -> set[str]:
        return set()

    def write(self, key: str, z: int, tile: Tile, maps: dict[str, np.ndarray]) -> None:
        y0, x0 = tile.core[0], tile.core[2]
        h, w = maps["prob"].shape
        for name, arr in maps.items():
            if name not in self.maps:
                self.maps[name] = np.zeros(self.full, np.float32)
            if name == "samples":
                self.maps[name][:, y0 : y0 + h, x0 : x0 + w] = arr
            else:
                self.maps[name][z, y0 : y0 + h, x0 : x0 + w] = arr

    def flush(self) -> None:
        pass

    def finish(self, executor=None):
        return None

    def result(self) -> dict[str, np.ndarray]:
        """{"prob", "consensus", "std"} (+ "samples") of the image's shape."""
        if len(self.shape) == 3:
            return dict(self.maps)
        return {n: (v if n == "samples" else v[0]) for n, v in self.maps.items()}


class TiffSink(MemorySink):
    """Maps in memory, then one TIFF per requested output, each written atomically.

    Args:
        shape: (H, W) or (Z, H, W).
        targets: {output name: path} with names from mask, prob, consensus, std, labels.
        threshold: mask = prob >= threshold.
        instances: the seeded watershed of `instances`/`objects` (default: InstanceConfig at `threshold`).
    """

    def __init__(self, shape: tuple[int, ...], *, targets: dict[str, Path], threshold: float,
                 instances: InstanceConfig | None = None):
        super().__init__(shape)
        self.targets, self.threshold = dict(targets), float(threshold)
        self.instances = instances or InstanceConfig(threshold=self.threshold)
        self.object_summary: ObjectSummary | None = None  # with "objects", once finished

    def finish(self, executor=None) -> tuple[Path, ...]:
        maps = self.output_maps()
        for kind, target in self.targets.items():
            if kind == "objects":
                rows = self.objects(maps["instances"])
                write_object_csv(target, rows, stack=len(self.shape) == 3)
                self.object_summary = summarize_objects(rows)
            else:
                write_tiff_atomic(target, maps[kind], compression="zlib", photometric="minisblack")
        return tuple(self.targets.values())

    def output_maps(self) -> dict[str, np.ndarray]:
        """{output name: array of the image's shape}: mask uint8, prob/consensus/std float32, labels and
        instances uint16/uint32 (instances also when only the object table is asked for)."""
        maps = dict(self.maps)
        maps["mask"] = (maps["prob"] >= self.threshold).astype(np.uint8)
        if "labels" in self.targets:
            maps["labels"] = label_components(maps["mask"])
        if "instances" in self.targets or "objects" in self.targets:
            maps["instances"] = label_planes(maps["prob"], self.instances, maps.get("boundary"))
        keep = set(self.targets) | ({"instances"} if "objects" in self.targets else set())
        return {k: (v if len(self.shape) == 3 else v[0]) for k, v in maps.items() if k in keep}

    def objects(self, instances: np.ndarray) -> list[dict]:
        """The per-object table of this image (stacks: one row per object per slice, with its slice `z`)."""
        stack = len(self.shape) == 3
        return list(plane_objects(instances if stack else instances[None], self.maps, stack=stack))


def label_components(mask: np.ndarray) -> np.ndarray:
    """Connected components (8-connectivity within each slice) of (Z, H, W) uint8."""
    from scipy import ndimage

    labels, offset = [], 0
    for m in mask:
        lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
        labels.append(lab)
        offset = max(offset, n)
    out = np.stack(labels)
    return out.astype(np.uint16 if offset < 2**16 else np.uint32)


@dataclass
class ZarrSink:
    """One OME-Zarr output, written block by block (picklable: Dask tasks write their own blocks).

    Args:
        final: `OUT/NAME.ome.zarr`.
        layout: geometry and contents (see ome_zarr.ZarrLayout).
        threshold: mask = prob >= threshold.
        identity: JSON-able description of what the numbers depend on (model, source,
            shape, settings); a partial output is resumed only when it matches.
        resume: continue a partial output instead of starting afresh.
        instances: settings of `labels/instances` (with `layout.instances`).
        objects: `OUT/NAME_objects.csv`, the object table written next to the output, or None.
    """

    final: Path
    layout: oz.ZarrLayout
    threshold: float
    identity: dict
    resume: bool = False
    samples: int = 0
    preview_step: int = 0  # > 0: keep every step-th pixel of mask and consensus in memory
    preview: dict = field(default_factory=dict)
    instances: InstanceConfig | None = None
    objects: Path | None = None
    object_summary: ObjectSummary | None = None  # with `objects`, once finished
    # compress and write each block on a thread while the next one is predicted; a copy sent to
    # another process (Dask) writes in the task, so a finished task has written its block
    background: bool = True
    _writer: ThreadPoolExecutor | None = field(default=None, repr=False, compare=False)
    _pending: object = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "background": False, "_writer": None, "_pending": None}

    @property
    def partial(self) -> Path:
        return oz.partial_path(self.final)

    def resume_state(self):
        partial = self.partial
        if self.resume and partial.is_dir():
            meta = oz.read_metadata(partial)
            if {k: meta.get(k) for k in self.identity} == self.identity:
                stats = [tuple(s) if s is not None else None for s in meta["stats"]]
                return stats, [np.asarray(v, dtype=np.float32) if v is not None else None for v in meta["latents"]]
            raise ConfigError(f"{partial}: written with other settings or another model; remove it or pass --overwrite to start again")
        if partial.exists():
            log.info("%s: removing the partial output of an earlier run (no --resume)", partial)
            shutil.rmtree(partial)
        return None

    def begin(self, stats, latents) -> None:
        meta = {**self.identity, "stats": [list(s) if s is not None else None for s in stats],
                "latents": [v.tolist() if v is not None else None for v in latents]}
        oz.create_output(self.partial, self.layout, metadata=meta)

    def done(self) -> set[str]:
        return oz.done_blocks(self.partial)

    def write(self, key: str, z: int, tile: Tile, maps: dict[str, np.ndarray]) -> None:
        maps = {**maps, "mask": (maps["prob"] >= self.threshold).astype(np.uint8)}
        origin = ((z,) if len(self.layout.shape) == 3 else ()) + (tile.core[0], tile.core[2])
        if self.background:
            self.flush()  # one block in flight bounds the memory
            self._writer = self._writer or ThreadPoolExecutor(1, thread_name_prefix="zarr-write")
            self._pending = self._writer.submit(oz.write_block, self.partial, self.layout, key=key, origin=origin, maps=maps)
        else:
            oz.write_block(self.partial, self.layout, key=key, origin=origin, maps=maps)
        if self.preview_step:
            self._keep_preview(z, tile, maps)

    def flush(self) -> None:
        """Wait for the block being written; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _keep_preview(self, z: int, tile: Tile, maps: dict[str, np.ndarray]) -> None:
        """Downsampled mask and consensus of the middle plane, from the blocks as they are written."""
        shape = self.layout.shape
        if z != (shape[0] // 2 if len(shape) == 3 else 0):
            return
        s = self.preview_step
        if not self.preview:
            small = (-(-shape[-2] // s), -(-shape[-1] // s))
            self.preview = {"mask": np.zeros(small, np.uint8), "consensus": np.ones(small, np.float32)}
        y0, x0 = tile.core[0], tile.core[2]  # multiples of the tile size; the step divides it
        for name in ("mask", "consensus"):
            if name in maps:
                part = maps[name][(-y0) % s :: s, (-x0) % s :: s]
                ys, xs = -(-y0 // s), -(-x0 // s)
                self.preview[name][ys : ys + part.shape[0], xs : xs + part.shape[1]] = part

    def finish(self, executor=None) -> Path:
        """Label instances block by block (tasks on `executor`), write the object table, rename the output."""
        self.flush()
        if self._writer is not None:
            self._writer.shutdown()
            self._writer = None
        if self.layout.instances:
            cfg = self.instances or InstanceConfig(threshold=self.threshold)
            found = label_blocks(self.partial, self.layout, cfg, executor=executor, table=self.objects is not None)
            if self.objects is not None:  # streamed from the per-object sums: no dict per object is held
                kw = dict(disagree=cfg.disagree, planes=found.planes, exact=found.exact)
                write_object_csv(self.objects, iter_rows(found.ids, found.sums, **kw), stack=found.planes is not None)
                self.object_summary = summarize_objects(iter_rows(found.ids, found.sums, **kw))
        return oz.finalize(self.partial, self.final)
