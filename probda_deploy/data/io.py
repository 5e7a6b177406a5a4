"""Reading, validating and writing images. numpy + imageio/tifffile only (no torch).

Every problem becomes one `ImageReadError` whose message starts with the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import tifffile

from ..errors import ImageReadError
from ..files import atomic_path

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def check_readable(path: Path, *, folder_ok: bool = False) -> None:
    """Raise ImageReadError if `path` is missing, a folder (unless `folder_ok`), empty or unreadable."""
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        if folder_ok:
            return
        raise ImageReadError(f"{path}: is a folder, not an image")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageReadError(f"{path}: cannot access ({e.strerror})") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied; check the file's read permissions")


def unreadable(path: Path, error: Exception) -> ImageReadError:
    """The error for a file a decoder failed on: `PATH: not a readable image (first line of the decoder's message)`."""
    msg = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
    return ImageReadError(f"{path}: not a readable image ({msg})")


def check_values(path: Path, *, nonfinite: int, lo: float, hi: float) -> None:
    """Raise ImageReadError for NaN/inf pixels or a constant image (the same rule in-memory and streamed)."""
    if nonfinite:
        raise ImageReadError(f"{path}: contains {nonfinite} NaN/inf pixel(s); clean the image first")
    if lo == hi:
        raise ImageReadError(f"{path}: image is constant (all pixels = {lo:g}); nothing to segment")


def _read_raw(path: Path) -> np.ndarray:
    check_readable(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return np.asarray(tifffile.imread(path))
        import imageio.v3 as iio

        return np.asarray(iio.imread(path))
    except PermissionError:
        raise ImageReadError(f"{path}: permission denied; check the file's read permissions") from None
    except Exception as e:  # decoders raise many types for corrupt files
        raise unreadable(path, e) from None


LUMA = np.array([0.299, 0.587, 0.114])


def is_rgb_shape(shape: tuple[int, ...]) -> bool:
    """(..., H, W, 3|4) with H, W > 4: colour samples in the last axis (the rule for in-memory and streamed reads)."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and min(shape[-3:-1]) > 4


def warn_grayscale(path: Path, channels: int) -> None:
    log.warning("%s: RGB%s image converted to grayscale", path, "A" if channels == 4 else "")


def to_grayscale(arr: np.ndarray, path: Path) -> np.ndarray:
    """(..., 3|4) RGB(A) -> (...) luminance; warns once per file."""
    warn_grayscale(path, arr.shape[-1])
    return arr[..., :3].astype(np.float64) @ LUMA


def read_image(path: str | Path, *, allow_stack: bool = True) -> np.ndarray:
    """Read a 2D image (or a 3D stack) as validated float32.

    Args:
        path: TIFF, PNG or JPEG file; any integer or float dtype.
        allow_stack: accept (Z, H, W) stacks.

    Returns:
        (H, W) or (Z, H, W) float32.

    Raises:
        ImageReadError: unreadable, empty, wrong dimensionality, NaN/inf or constant.
    """
    path = Path(path)
    arr = _read_raw(path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported pixel type {arr.dtype}")
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if is_rgb_shape(arr.shape):
        arr = to_grayscale(arr, path)
    if arr.ndim == 1 or arr.ndim == 0:
        # squeeze of a 1xN image; keep it 2D
        arr = arr.reshape(1, -1)
    if arr.size == 0:
        raise ImageReadError(f"{path}: image has no pixels (shape {arr.shape})")
    if arr.ndim == 3 and not allow_stack:
        raise ImageReadError(f"{path}: 3D stack {arr.shape} where a 2D image is needed")
    if arr.ndim > 3:
        raise ImageReadError(f"{path}: {arr.ndim}D array {arr.shape} is not supported; give 2D images or 3D (Z, H, W) stacks")
    out = arr.astype(np.float32)
    finite = np.isfinite(out)
    nonfinite = int(out.size - np.count_nonzero(finite))
    check_values(path, nonfinite=nonfinite, lo=0.0 if nonfinite else float(out.min()), hi=1.0 if nonfinite else float(out.max()))
    return out


def read_label(path: str | Path, *, shape: tuple[int, ...] | None = None, image_path: str | Path | None = None,
               binary: bool = True) -> np.ndarray:
    """Read an instance or binary label image as a binary float32 mask (label != 0), or its ids (binary=False: uint32).

    Raises:
        ImageReadError: unreadable, non-integer-valued, negative, or shape mismatch.
    """
    path = Path(path)
    arr = _read_raw(path)
    arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim >= 3 and arr.shape[-1] in (3, 4) and (shape is None or len(shape) == 2):
        arr = arr[..., 0] if np.all(arr[..., :3] == arr[..., :1]) else arr.max(axis=-1)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: label contains NaN/inf")
        if not np.all(arr == np.round(arr)):
            raise ImageReadError(f"{path}: label has non-integer values; labels must be instance ids or 0/1 masks")
    if np.issubdtype(arr.dtype, np.signedinteger) or np.issubdtype(arr.dtype, np.floating):
        if arr.min() < 0:
            raise ImageReadError(f"{path}: label has negative values (min {arr.min():g}); labels must be >= 0")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        against = f" image {image_path}" if image_path else " image"
        raise ImageReadError(f"{path}: label shape {tuple(arr.shape)} != {against.strip()} shape {tuple(shape)}; check --labels")
    return (arr != 0).astype(np.float32) if binary else arr.astype(np.uint32)


def list_images(inputs: str | Path | list[str | Path], *, what: str = "images") -> list[Path]:
    """Expand files, folders and globs to a sorted list of image files.

    Raises:
        ImageReadError: a path does not exist or nothing was found.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if any(ch in str(item) for ch in "*?["):
            matches = sorted(Path(q) for q in _glob(str(item)))
            found += [m for m in matches if m.is_file() and is_image_file(m)]
        elif p.is_dir():
            try:
                found += sorted(q for q in p.iterdir() if is_image_file(q) and (q.is_file() or not q.exists()))
            except PermissionError:
                raise ImageReadError(f"{p}: permission denied listing the folder") from None
        elif p.exists() or p.is_symlink():
            found.append(p)
        else:
            raise ImageReadError(f"{p}: no such file or folder")
    if not found:
        raise ImageReadError(f"{', '.join(map(str, inputs))}: no {what} found (looked for {', '.join(IMAGE_SUFFIXES)})")
    seen, unique = set(), []
    for f in found:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique


def _glob(pattern: str) -> list[str]:
    import glob

    return glob.glob(pattern, recursive=True)


def write_tiff_atomic(path: str | Path, array: np.ndarray, **kwargs) -> Path:
    """Write a TIFF via a temp file + rename so no partial file is ever visible."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array, **kwargs)
    return Path(path)
