"""In-memory random patch sampling for training and fixed patches for validation.

Sampling is a pure function of the generator passed in, so a training step's
batch depends only on (seed, iteration): exact resume needs no data state.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ImageReadError, ProbdaError
from .io import read_image, read_label
from ..method import TRAIN_NORMALIZATIONS, check_choice, standardize

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    """Raw float32 (H, W) images, optional labels and their source names.

    Labels are binary (H, W) masks, (2, H, W) foreground and object boundaries
    (`boundary_targets`), or (C, H, W) float maps cropped alongside the image (the
    source model's pseudo-labels, `training.pseudo_labels.source_maps`).
    """

    images: list[np.ndarray]
    labels: list[np.ndarray] | None
    names: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def split(self, val_fraction: float, rng: np.random.Generator) -> tuple["ImageSet", "ImageSet"]:
        """Hold out whole images (at least one when there are two or more)."""
        n = len(self)
        if n < 2 or val_fraction <= 0:
            log.warning("only %d image(s): validating on the training images", n)
            return self, self
        n_val = min(n - 1, max(1, int(round(n * val_fraction))))
        order = rng.permutation(n)
        return self.subset(order[n_val:]), self.subset(order[:n_val])

    def subset(self, idx) -> "ImageSet":
        idx = [int(i) for i in idx]
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return ImageSet([self.images[i] for i in idx], labels, [self.names[i] for i in idx])


def foreground(label: np.ndarray) -> np.ndarray:
    """The foreground of an (H, W) mask or of (C, H, W) targets (channel 0)."""
    return label if label.ndim == 2 else label[0]


def boundary_targets(ids: np.ndarray) -> np.ndarray:
    """(2, H, W) float32 training targets from (H, W) instance ids: foreground and object boundaries.

    Boundaries are `skimage.segmentation.find_boundaries(mode="thick")`: the pixels on both sides of
    every object's edge, so the line between two touching objects is 2 px wide. A binary label
    (one id for every object) gives the outline of each connected component only; touching objects
    need instance ids.
    """
    from skimage.segmentation import find_boundaries

    return np.stack([ids > 0, find_boundaries(ids, mode="thick")]).astype(np.float32)


def load_image_set(pairs_or_files: list, *, labeled: bool, boundaries: bool = False) -> ImageSet:
    """Read (image, label) pairs or image files; 3D stacks contribute each slice.

    With `boundaries`, each label slice becomes (2, H, W) `boundary_targets` of its instance ids.

    Every file is checked before anything is trained on: all problems are
    reported together, one line per file.

    Raises:
        ImageReadError: one or more unusable images or labels (one message line each,
            then a summary line).
    """
    images, labels, names, problems = [], [], [], []
    for item in pairs_or_files:
        img_path, lab_path = (item if labeled else (item, None))
        try:
            img = read_image(img_path)
            lab = read_label(lab_path, shape=img.shape, image_path=img_path, binary=not boundaries) if labeled else None
        except ProbdaError as e:
            problems.append(str(e))
            continue
        slices = [img] if img.ndim == 2 else list(img)
        lab_slices = [lab] if lab is None or lab.ndim == 2 else list(lab)
        for z, s in enumerate(slices):
            images.append(s)
            names.append(Path(img_path).name + (f"[{z}]" if img.ndim == 3 else ""))
            if labeled:
                labels.append(boundary_targets(lab_slices[z]) if boundaries else lab_slices[z])
    if problems:
        what = "image/label pairs" if labeled else "images"
        problems.append(f"{len(problems)} of {len(pairs_or_files)} {what} cannot be used; fix or remove them (nothing was trained)")
        raise ImageReadError("\n".join(problems))
    return ImageSet(images, labels if labeled else None, names)


def _crop(arr: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """(..., size, size) crop of the last two axes, padded (reflect, or edge if too small) where the array is smaller."""
    h, w = arr.shape[-2:]
    pad_y, pad_x = max(0, size - h), max(0, size - w)
    if pad_y or pad_x:
        mode = "reflect" if pad_y < h and pad_x < w else "edge"
        arr = np.pad(arr, ((0, 0),) * (arr.ndim - 2) + ((0, pad_y), (0, pad_x)), mode=mode)
    return arr[..., y : y + size, x : x + size]


def _stats(img: np.ndarray) -> tuple[float, float]:
    return float(img.mean(dtype=np.float64)), float(img.std(dtype=np.float64))


def _image_stats(data: ImageSet, normalization: str) -> list[tuple[float, float]] | None:
    """Per-image (mean, std) for the "image" rule; None for "patch"."""
    check_choice("--normalization", normalization, TRAIN_NORMALIZATIONS)
    return [_stats(im) for im in data.images] if normalization == "image" else None


def standardize_crop(data: ImageSet, i: int, y: int, x: int, size: int, stats: list | None) -> np.ndarray:
    """Crop of image i standardised with its image's (mean, std) from `stats`, or its own if stats is None."""
    crop = _crop(data.images[i], y, x, size)
    if stats is None:
        return standardize(crop)
    mean, std = stats[i]
    return standardize(crop, mean=mean, std=std)


class PatchSampler:
    """Random patches (B, 1, P, P), standardised (docs/method.md, "Source training"; docs/deployment.md).

    Args:
        data: images (and labels for supervised sampling).
        patch_size: P; must be a multiple of the model's size multiple.
        min_foreground: reject patches with a smaller label foreground fraction
            (up to `max_tries` draws, then accept).
        normalization: "image" (statistics of the whole image, as prediction
            uses them) or "patch" (each patch its own; the reference code).
    """

    def __init__(self, data: ImageSet, patch_size: int, *, min_foreground: float = 0.0, max_tries: int = 10,
                 normalization: str = "image"):
        if len(data) == 0:
            raise ConfigError("no images to sample patches from")
        self.data, self.size = data, patch_size
        self.min_fg, self.max_tries = min_foreground, max_tries
        self.stats = _image_stats(data, normalization)
        areas = np.array([im.size for im in data.images], dtype=np.float64)
        self.p = areas / areas.sum()

    def _one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        for _ in range(self.max_tries):
            i = int(rng.choice(len(self.p), p=self.p))
            img = self.data.images[i]
            y = int(rng.integers(max(1, img.shape[0] - self.size + 1)))
            x = int(rng.integers(max(1, img.shape[1] - self.size + 1)))
            lab = None if self.data.labels is None else _crop(self.data.labels[i], y, x, self.size)
            if lab is None or self.min_fg <= 0 or foreground(lab).mean() >= self.min_fg:
                break
        return standardize_crop(self.data, i, y, x, self.size, self.stats), lab

    def sample(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(x, y): x (B, 1, P, P) float32; y (B, C, P, P) float32 (C = 1 for masks), None for unlabeled data."""
        pairs = [self._one(rng) for _ in range(batch_size)]
        x = np.stack([p[0] for p in pairs])[:, None]
        if pairs[0][1] is None:
            return x, None
        y = np.stack([p[1] for p in pairs]).astype(np.float32)
        return x, (y[:, None] if y.ndim == 3 else y)

    def with_labels(self, labels: list[np.ndarray]) -> "PatchSampler":
        """The same images and sampling with other labels (e.g. pseudo-label maps, one per image)."""
        other = copy.copy(self)
        other.data = ImageSet(self.data.images, labels, self.data.names)
        return other


def grid_patches(data: ImageSet, patch_size: int, *, max_patches: int = 64,
                 normalization: str = "image") -> tuple[np.ndarray, np.ndarray | None]:
    """Deterministic non-overlapping patches covering the images (for validation)."""
    xs, ys = [], []
    stats = _image_stats(data, normalization)
    for i, img in enumerate(data.images):
        h, w = img.shape
        for y0 in range(0, max(1, h - patch_size + 1), patch_size):
            for x0 in range(0, max(1, w - patch_size + 1), patch_size):
                xs.append(standardize_crop(data, i, y0, x0, patch_size, stats))
                if data.labels is not None:
                    ys.append(_crop(data.labels[i], y0, x0, patch_size))
    idx = np.linspace(0, len(xs) - 1, num=min(max_patches, len(xs))).round().astype(int)
    x = np.stack([xs[i] for i in idx])[:, None]
    y = None if not ys else np.stack([ys[i] for i in idx]).astype(np.float32)
    return x, (y[:, None] if y is not None and y.ndim == 3 else y)
