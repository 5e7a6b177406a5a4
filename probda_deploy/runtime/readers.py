"""Lazy, chunk-by-chunk access to images larger than RAM (numpy + zarr + tifffile only).

`open_image(path)` returns an array-like of shape (H, W) or (Z, H, W) that
supports numpy-style slicing and reads only what is sliced:
- zarr arrays and OME-Zarr images (`*.zarr` folders; the full-resolution level
  of the first multiscale), singleton leading axes (t, c) dropped lazily;
- uncompressed contiguous TIFFs as numpy memory maps;
- other TIFFs (compressed, tiled, strips) through tifffile's zarr store.
PNG/JPEG are small by nature and read whole. The tiler reads windows with
`tiling.read_window`, and whole-image statistics stream with `tiling.scan_stats`.
`open_image(path, in_memory=True)` reads the whole image, validated, as float32
(`data.io.read_image`): every path of the runtime opens images here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..data.io import LUMA, check_readable, is_rgb_shape, list_images, read_image, unreadable, warn_grayscale
from ..errors import ImageReadError, ProbdaError

log = logging.getLogger(__name__)

ZARR_SUFFIXES = (".zarr",)


def is_zarr_path(path: str | Path) -> bool:
    """True for `*.zarr` folders (plain zarr arrays or OME-Zarr images)."""
    p = Path(path)
    return p.suffix.lower() in ZARR_SUFFIXES and p.is_dir()


def is_tiff_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".tif", ".tiff")


class LazyImage:
    """A lazy view of an on-disk array, read only where sliced.

    Fixed leading indices (t, c of OME-Zarr, a stack's plane) are dropped, an
    RGB(A) last axis is reduced to luminance, and decoder errors on read become
    one ImageReadError naming the file.

    Args:
        array: array-like with numpy slicing (zarr array, memmap, LazyImage).
        path: the file, for error messages.
        lead: indices of the leading axes to fix.
        rgb: the last axis holds 3 or 4 colour samples.
    """

    def __init__(self, array, path: str | Path, *, lead: tuple[int, ...] = (), rgb: bool = False):
        self.array, self.path, self.lead, self.rgb = array, Path(path), tuple(lead), rgb
        shape = tuple(array.shape[len(self.lead):])
        self.shape = shape[:-1] if rgb else shape
        self.dtype = np.dtype(np.float64) if rgb else np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        try:
            out = np.asarray(self.array[self.lead + index])
        except Exception as e:
            raise _read_error(self.path, e) from None
        return out[..., :3].astype(np.float64) @ LUMA if self.rgb else out

    def __array__(self, dtype=None, copy=None):
        out = self[(slice(None),) * self.ndim]
        return out if dtype is None else out.astype(dtype)


def plane(image, z: int):
    """Lazy (H, W) plane z of a (Z, H, W) array-like; a 2D image is returned as is."""
    return image if image.ndim == 2 else LazyImage(image, getattr(image, "path", "image"), lead=(z,))


def open_image(path: str | Path, *, warn: bool = True, in_memory: bool = False):
    """Open an image for windowed reads without loading it (or, with `in_memory`, read it whole).

    Args:
        path: `.zarr` folder, `.tif/.tiff` file (or PNG/JPEG, read whole).
        warn: log conversions (RGB -> grayscale); tasks that reopen a file pass False.
        in_memory: read the whole image as validated float32 (`data.io.read_image`;
            refuses NaN/inf and constant images).

    Returns:
        LazyImage (H, W) or (Z, H, W) with `.shape`, `.dtype`, `.ndim` and slicing
        (PNG/JPEG: a float32 numpy array).

    Raises:
        ImageReadError: missing, empty, unreadable or corrupt file, unsupported dtype or layout.
        OSError, MemoryError: system-level failures (worth a retry), not a verdict on the file.
    """
    path = Path(path)
    if in_memory and not is_zarr_path(path):
        return read_image(path)
    check_readable(path, folder_ok=is_zarr_path(path))
    try:
        if is_zarr_path(path):
            array = _open_zarr(path)
        elif is_tiff_path(path):
            array = _open_tiff(path)
        else:
            return read_image(path)
    except Exception as e:
        raise _read_error(path, e) from None
    return _squeeze(array, path, warn=warn)


def _read_error(path: Path, error: Exception) -> Exception:
    """Decoder failures become `PATH: not a readable image (...)`; system errors (errno set, memory) pass unchanged."""
    if isinstance(error, (ImageReadError, MemoryError)) or (isinstance(error, OSError) and error.errno is not None):
        return error
    return unreadable(path, error)


def _open_zarr(path: Path):
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]]
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]]
    raise ImageReadError(f"{path}: a zarr group with {len(arrays)} arrays and no OME-Zarr multiscales metadata; give the array's folder")


def _open_tiff(path: Path):
    """A memory map when the data is contiguous and uncompressed, else tifffile's zarr store."""
    import tifffile

    try:
        return tifffile.memmap(str(path), mode="r")
    except (ValueError, OSError):
        import zarr

        node = zarr.open(tifffile.imread(str(path), aszarr=True), mode="r")
        return node if isinstance(node, zarr.Array) else node["0"]


def _squeeze(array, path: Path, *, warn: bool):
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uif":
        raise ImageReadError(f"{path}: unsupported pixel type {dtype}; give a grayscale integer or float image")
    full = tuple(array.shape)
    lead = 0
    while len(full) - lead > 2 and full[lead] == 1:  # singleton t, c, z axes
        lead += 1
    rgb = is_rgb_shape(full[lead:])
    shape = full[lead:-1] if rgb else full[lead:]
    if len(shape) > 3 or len(shape) < 2:
        raise ImageReadError(f"{path}: {len(full)}D array {full} is not supported; give 2D images or 3D (Z, H, W) stacks")
    if rgb and warn:
        warn_grayscale(path, full[-1])
    return LazyImage(array, path, lead=(0,) * lead, rgb=rgb)


def list_inputs(inputs, *, zarr: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand inputs like data.io.list_images, also accepting `*.zarr` folders (unless `zarr` is False).

    Returns:
        (files, failures): failures are (input, error message) of inputs that did not expand.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        try:
            if zarr and is_zarr_path(p):
                found = [p]
            elif p.is_dir():
                zarrs = sorted(q for q in p.iterdir() if zarr and is_zarr_path(q) and not q.name.startswith("."))
                try:
                    found = sorted(set(list_images(p)) | set(zarrs))
                except ProbdaError:
                    if not zarrs:
                        raise
                    found = zarrs
            else:
                found = list_images(p)
        except ProbdaError as e:
            failures.append((p, str(e)))
            continue
        files += [f for f in found if f not in files]
    return files, failures
