"""Lazy, chunk-by-chunk access to images larger than RAM (numpy + zarr + tifffile only).

`open_image(path)` returns an array-like of shape (H, W) or (Z, H, W) that
supports numpy-style slicing and reads only what is sliced:
- zarr arrays and OME-Zarr images (`*.zarr` folders; the full-resolution level
  of the first multiscale), singleton leading axes (t, c) dropped lazily;
- uncompressed contiguous TIFFs as numpy memory maps;
- other TIFFs (compressed, tiled, strips) through tifffile's zarr store.
PNG/JPEG are small by nature and read whole. The tiler reads windows with
`tiling.read_window`, and whole-image statistics stream with `tiling.image_stats`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import ImageReadError

log = logging.getLogger(__name__)

ZARR_SUFFIXES = (".zarr",)


def is_zarr_path(path: str | Path) -> bool:
    """True for `*.zarr` folders (plain zarr arrays or OME-Zarr images)."""
    p = Path(path)
    return p.suffix.lower() in ZARR_SUFFIXES and p.is_dir()


def is_tiff_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".tif", ".tiff")


class LeadingView:
    """A lazy view `array[lead...]` that drops fixed leading indices (t, c of OME-Zarr).

    Args:
        array: array-like with numpy slicing.
        lead: indices of the leading axes to fix.
    """

    def __init__(self, array, lead: tuple[int, ...]):
        self.array, self.lead = array, tuple(lead)
        self.shape = tuple(array.shape[len(lead):])
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        index = index if isinstance(index, tuple) else (index,)
        return self.array[self.lead + index]

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self[(slice(None),) * self.ndim])
        return out if dtype is None else out.astype(dtype)


def plane(image, z: int):
    """Lazy (H, W) plane z of a (Z, H, W) array-like; a 2D image is returned as is."""
    return image if image.ndim == 2 else LeadingView(image, (z,))


def open_image(path: str | Path):
    """Open an image for windowed reads without loading it.

    Args:
        path: `.zarr` folder, `.tif/.tiff` file (or PNG/JPEG, read whole).

    Returns:
        Array-like (H, W) or (Z, H, W) with `.shape`, `.dtype`, `.ndim` and slicing.

    Raises:
        ImageReadError: unreadable file, unsupported dtype or layout (colour, channels).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    try:
        if is_zarr_path(path):
            array = _open_zarr(path)
        elif is_tiff_path(path):
            array = _open_tiff(path)
        else:
            from ..data.io import read_image

            return read_image(path)
    except ImageReadError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ImageReadError(f"{path}: cannot open for chunked reading ({type(e).__name__}: {e}); check the file") from None
    return _squeeze(array, path)


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
    import tifffile

    try:
        return tifffile.memmap(str(path), mode="r")
    except (ValueError, OSError):
        import zarr

        store = tifffile.imread(str(path), aszarr=True)
        node = zarr.open(store, mode="r")
        return node if isinstance(node, zarr.Array) else node["0"]


def _squeeze(array, path: Path):
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "uif" or dtype.kind == "c":
        raise ImageReadError(f"{path}: unsupported dtype {dtype}; give a grayscale integer or float image")
    shape = tuple(array.shape)
    lead = 0
    while len(shape) - lead > 3 and shape[lead] == 1:
        lead += 1
    if len(shape) - lead > 3 or len(shape) < 2 or (len(shape) - lead == 3 and shape[-1] in (3, 4) and is_tiff_path(path)):
        raise ImageReadError(
            f"{path}: shape {shape} is not a grayscale (H, W) or (Z, H, W) image; "
            f"convert colour/multichannel images to one channel first"
        )
    view = LeadingView(array, (0,) * lead) if lead else array
    if view.ndim == 3 and view.shape[0] == 1:
        view = LeadingView(view, (0,))
    return view


def image_shape(path: str | Path) -> tuple[int, ...]:
    """(H, W) or (Z, H, W) of an image without reading its pixels.

    Raises:
        ImageReadError: unreadable file.
    """
    path = Path(path)
    if is_zarr_path(path) or is_tiff_path(path):
        return tuple(open_image(path).shape)
    from ..data.io import read_image

    return tuple(read_image(path).shape)


def list_inputs(inputs) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand inputs like data.io.list_images, also accepting `*.zarr` folders.

    Returns:
        (files, failures): failures are (input, error message) of inputs that did not expand.
    """
    from ..data.io import list_images
    from ..errors import ProbdaError

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    files: list[Path] = []
    failures: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        try:
            if is_zarr_path(p):
                found = [p]
            elif p.is_dir():
                zarrs = sorted(q for q in p.iterdir() if is_zarr_path(q) and not q.name.startswith("."))
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
