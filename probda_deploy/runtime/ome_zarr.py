"""OME-Zarr output written block by block: NGFF multiscales, a pyramid, completion markers.

Layout of `NAME.ome.zarr` (NGFF 0.4 on zarr v2 by default, 0.5 on zarr v3):
```
NAME.ome.zarr/          image: axes (c, [z,] y, x), channels = float maps (prob, consensus, std[, boundary])
  0/ 1/ 2/ ...          pyramid levels, 2x mean-downsampled in y and x
  labels/mask/0 1 ...   uint8 mask (image-label, nearest downsampling)
  labels/instances/...  uint32 object ids (with --instances; written after all blocks, see zarr_instances.py)
```
The chunk of level l is (tile / 2**l) pixels, so one block (one tile core of
the runtime's tiling) writes exactly one chunk per level and array: blocks
never share chunks and can be written by any process in any order.

Writes go to `NAME.ome.zarr.partial/`; every finished block leaves a marker in
`.probda_blocks/`; when all blocks are done the markers go and the folder is
renamed to `NAME.ome.zarr` (readers never see incomplete data under the final
name). `--resume` reopens the partial folder and redoes blocks without a marker.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..files import replace_dir

log = logging.getLogger(__name__)

MARKERS = ".probda_blocks"
SUFFIX = ".ome.zarr"
PARTIAL = ".partial"
NGFF_VERSIONS = ("0.4", "0.5")


@dataclass(frozen=True)
class ZarrLayout:
    """Geometry of one OME-Zarr output.

    Attributes:
        shape: (H, W) or (Z, H, W) of the image.
        chunk: level-0 chunk side (the tile core size).
        levels: number of pyramid levels.
        channels: float maps stored as channels, in order.
        mask: whether `labels/mask` is written.
        instances: whether `labels/instances` (uint32 object ids) is written.
        ngff: "0.4" (zarr v2) or "0.5" (zarr v3).
    """

    shape: tuple[int, ...]
    chunk: int
    levels: int
    channels: tuple[str, ...]
    mask: bool
    ngff: str = "0.4"
    instances: bool = False

    @property
    def labels(self) -> dict[str, str]:
        """{label image name: dtype} of the `labels/` group."""
        return {n: t for n, t, on in (("mask", "uint8", self.mask), ("instances", "uint32", self.instances)) if on}

    def level_shape(self, level: int) -> tuple[int, ...]:
        f = 2**level
        return (*self.shape[:-2], -(-self.shape[-2] // f), -(-self.shape[-1] // f))


def pyramid_levels(shape: tuple[int, ...], chunk: int, *, smallest: int = 256, min_chunk: int = 32) -> int:
    """Levels until the largest side is <= `smallest`, keeping chunks >= min_chunk and exact halvings."""
    levels, side, c = 1, max(shape[-2:]), chunk
    while side > smallest and c % 2 == 0 and c // 2 >= min_chunk:
        side, c, levels = -(-side // 2), c // 2, levels + 1
    return levels


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def _axes(ndim: int) -> list[dict]:
    axes = [{"name": "c", "type": "channel"}] if ndim else []
    if ndim == 3:
        axes.append({"name": "z", "type": "space", "unit": "micrometer"})
    return axes + [{"name": n, "type": "space", "unit": "micrometer"} for n in ("y", "x")]


def _multiscales(layout: ZarrLayout, name: str, *, channel_axis: bool) -> list[dict]:
    nd = len(layout.shape)
    lead = [1.0] * (nd - 2 + (1 if channel_axis else 0))
    datasets = [
        {"path": str(lvl), "coordinateTransformations": [{"type": "scale", "scale": lead + [float(2**lvl)] * 2}]}
        for lvl in range(layout.levels)
    ]
    axes = _axes(nd) if channel_axis else _axes(nd)[1:]
    ms = {"name": name, "axes": axes, "datasets": datasets, "type": "mean" if channel_axis else "nearest"}
    if layout.ngff == "0.4":
        ms["version"] = "0.4"
    return [ms]


def _set_ome(group, layout: ZarrLayout, attrs: dict) -> None:
    if layout.ngff == "0.5":
        group.attrs["ome"] = {"version": "0.5", **attrs}
    else:
        group.attrs.update(attrs)


def create_output(path: Path, layout: ZarrLayout, *, metadata: dict) -> None:
    """Create the (empty) OME-Zarr hierarchy at `path` with all metadata.

    Args:
        path: the `.partial` folder to create (must not exist).
        layout: geometry and contents.
        metadata: JSON-able provenance stored as attrs["probda"] (seed, K, stats, latents...).

    Raises:
        ConfigError: unknown NGFF version.
    """
    import zarr

    if layout.ngff not in NGFF_VERSIONS:
        raise ConfigError(f"NGFF version {layout.ngff}: choose one of {', '.join(NGFF_VERSIONS)}")
    fmt = 2 if layout.ngff == "0.4" else 3
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    lead = (1,) * (len(layout.shape) - 2)
    for lvl in range(layout.levels):
        c = max(1, layout.chunk // 2**lvl)
        shape = layout.level_shape(lvl)
        if layout.channels:
            root.create_array(str(lvl), shape=(len(layout.channels), *shape), chunks=(1, *lead, c, c), dtype="float32", fill_value=0.0)
    image_attrs = {
        "multiscales": _multiscales(layout, Path(str(path).removesuffix(PARTIAL)).name.removesuffix(SUFFIX), channel_axis=True),
        "omero": {"channels": [{"label": n, "active": True, "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0}} for n in layout.channels]},
    }
    if layout.channels:
        _set_ome(root, layout, image_attrs)
    root.attrs["probda"] = {**metadata, "channels": list(layout.channels)}
    if layout.labels:
        labels = root.create_group("labels")
        _set_ome(labels, layout, {"labels": list(layout.labels)})
    for name, dtype in layout.labels.items():
        group = labels.create_group(name)
        for lvl in range(layout.levels):
            c = max(1, layout.chunk // 2**lvl)
            group.create_array(str(lvl), shape=layout.level_shape(lvl), chunks=(*lead, c, c), dtype=dtype, fill_value=0)
        _set_ome(group, layout, {
            "multiscales": _multiscales(layout, name, channel_axis=False),
            "image-label": {**({"version": "0.4"} if layout.ngff == "0.4" else {}), "source": {"image": "../../"}},
        })
    (Path(path) / MARKERS).mkdir(exist_ok=True)


def read_metadata(path: Path) -> dict:
    """attrs["probda"] of an output (partial or final)."""
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs.get("probda", {}))


def _halve_mean(a: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes, edge-padded to even sizes (float32)."""
    ph, pw = a.shape[-2] % 2, a.shape[-1] % 2
    if ph or pw:
        a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, ph), (0, pw)], mode="edge")
    return (0.25 * (a[..., ::2, ::2] + a[..., 1::2, ::2] + a[..., ::2, 1::2] + a[..., 1::2, 1::2])).astype(np.float32)


def write_block(path: Path, layout: ZarrLayout, *, key: str, origin: tuple[int, ...], maps: dict[str, np.ndarray]) -> None:
    """Write one block at all pyramid levels, then its completion marker.

    Args:
        path: the output folder (partial).
        layout: as given to create_output.
        key: block name for the marker (e.g. "0_3_1").
        origin: ([z,] y0, x0) of the block at level 0; y0, x0 multiples of the chunk.
        maps: {"prob", "consensus", "std", "mask"}: (h, w) arrays of the block.
    """
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    lead = tuple(origin[:-2])
    y0, x0 = origin[-2:]
    if layout.channels:
        floats = np.stack([maps[n] for n in layout.channels]).astype(np.float32)
        for lvl in range(layout.levels):
            f = 2**lvl
            if lvl:
                floats = _halve_mean(floats)
            h, w = floats.shape[-2:]
            root[str(lvl)][(slice(None), *lead, slice(y0 // f, y0 // f + h), slice(x0 // f, x0 // f + w))] = floats
    if layout.mask:
        write_label(root, layout, "mask", origin=origin, block=maps["mask"])
    marker = Path(path) / MARKERS / key
    marker.write_text(json.dumps({"origin": list(origin)}))


def write_label(root, layout: ZarrLayout, name: str, *, origin: tuple[int, ...], block: np.ndarray, levels: int | None = None) -> None:
    """Write one block of the label image `labels/NAME` at its first `levels` levels (default all; nearest downsampling).

    Args:
        root: the open output group (mode "r+").
        origin: ([z,] y0, x0) of the block at level 0; y0, x0 multiples of the chunk.
        block: (h, w) labels of the block.
    """
    lead = tuple(origin[:-2])
    y0, x0 = origin[-2:]
    for lvl in range(layout.levels if levels is None else levels):
        f = 2**lvl
        part = block[::f, ::f]
        h, w = part.shape
        root[f"labels/{name}/{lvl}"][(*lead, slice(y0 // f, y0 // f + h), slice(x0 // f, x0 // f + w))] = part


def read_region(root, layout: ZarrLayout, name: str, *, z: int | None, region: tuple[int, int, int, int]) -> np.ndarray:
    """Level-0 (h, w) values of a float channel (prob, consensus, std, boundary) or a label image (mask, instances).

    Args:
        root: the open output group.
        z: plane of a stack, None for 2D outputs.
        region: (y0, y1, x0, x1).
    """
    y0, y1, x0, x1 = region
    lead = () if z is None else (z,)
    if name in layout.channels:
        return np.asarray(root["0"][(layout.channels.index(name), *lead, slice(y0, y1), slice(x0, x1))])
    return np.asarray(root[f"labels/{name}/0"][(*lead, slice(y0, y1), slice(x0, x1))])


def done_blocks(path: Path) -> set[str]:
    """Keys of blocks whose marker exists."""
    d = Path(path) / MARKERS
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def finalize(partial: Path, final: Path) -> Path:
    """Drop the markers and rename `NAME.ome.zarr.partial` to `NAME.ome.zarr`."""
    shutil.rmtree(Path(partial) / MARKERS, ignore_errors=True)
    return replace_dir(partial, final)
