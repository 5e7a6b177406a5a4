"""Augmentations on standardised numpy patches (B, 1, H, W) float32.

- geometric: flips and 90-degree rotations, applied to image and label alike;
- `paper` preset: flips only (reference code); `robust` adds nnU-Net-style
  intensity scaling, contrast, gamma, blur, noise and low-resolution simulation;
- views for self-training (docs/method.md, "Adaptation strategies"): `none` (geometry only),
  `noise` (additive noise: changes no object's apparent size), `weak` and
  `strong` (the reference's, with blur; blur changes apparent object size).
Every function takes an explicit `np.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..method import VIEWS, standardize_batch


def flip_rotate(rng: np.random.Generator, *arrays: np.ndarray, rotate: bool = True) -> tuple[np.ndarray, ...]:
    """Same random flips (and 90-degree rotation of square patches) for every array, per sample."""
    outs = [a.copy() for a in arrays]
    b = arrays[0].shape[0]
    square = arrays[0].shape[-1] == arrays[0].shape[-2]
    for i in range(b):
        fy, fx = rng.random() < 0.5, rng.random() < 0.5
        k = int(rng.integers(4)) if rotate and square else 0
        for o in outs:
            s = o[i]
            if fy:
                s = s[..., ::-1, :]
            if fx:
                s = s[..., ::-1]
            if k:
                s = np.rot90(s, k, axes=(-2, -1))
            o[i] = s
    return tuple(outs)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma)) if sigma > 0 else x


def _noise(rng: np.random.Generator, x: np.ndarray, sigma: float) -> np.ndarray:
    return x + rng.normal(0.0, sigma, size=x.shape).astype(np.float32)


def _contrast(x: np.ndarray, alpha: float) -> np.ndarray:
    m = x.mean()
    return (x - m) * alpha + m


def _gamma(x: np.ndarray, gamma: float) -> np.ndarray:
    """Non-affine intensity change (survives re-standardisation, unlike contrast)."""
    lo, hi = x.min(), x.max()
    rng_ = hi - lo + 1e-7
    return ((x - lo) / rng_) ** gamma * rng_ + lo


def _shading(rng: np.random.Generator, x: np.ndarray, log_amplitude: float) -> np.ndarray:
    """Uneven illumination: the intensity above the patch minimum times exp(a * ramp), a linear ramp
    within [-1, 1] in a random direction (a multiplicative field survives re-standardisation)."""
    h, w = x.shape[-2:]
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    ramp = (np.cos(theta) * yy + np.sin(theta) * xx) / np.sqrt(2)
    lo = x.min()
    return ((x - lo) * np.exp(log_amplitude * ramp) + lo).astype(x.dtype)


def _background(rng: np.random.Generator, x: np.ndarray, amplitude: float, length: float) -> np.ndarray:
    """Additive smooth background (out-of-focus light, autofluorescence): a random field with
    correlation length ~`length` px, from 0 to `amplitude` x the patch's std."""
    h, w = x.shape[-2:]
    grid = rng.random((int(np.ceil(h / length)) + 2, int(np.ceil(w / length)) + 2))
    field = ndimage.zoom(grid, length, order=3)[: h, : w]
    field = (field - field.min()) / (np.ptp(field) + 1e-7)
    return (x + amplitude * float(x.std()) * field).astype(x.dtype)


def _low_res(x: np.ndarray, factor: float) -> np.ndarray:
    small = ndimage.zoom(x, (1, 1 / factor, 1 / factor), order=0)
    zoom = (1, x.shape[-2] / small.shape[-2], x.shape[-1] / small.shape[-1])
    up = ndimage.zoom(small, zoom, order=3)
    return up[:, : x.shape[-2], : x.shape[-1]]


def robust_intensity(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """nnU-Net-style intensity augmentation per sample of (B, 1, H, W), then re-standardise."""
    out = x.copy()
    for i in range(x.shape[0]):
        s = out[i]
        if rng.random() < 0.2:
            s = _blur(s, rng.uniform(0.5, 1.5))
        if rng.random() < 0.15:
            s = _noise(rng, s, rng.uniform(0.0, 0.1))
        if rng.random() < 0.15:
            s = s * rng.uniform(0.75, 1.25)
        if rng.random() < 0.15:
            s = _contrast(s, rng.uniform(0.65, 1.5))
        if rng.random() < 0.15:
            s = _low_res(s, rng.uniform(1.0, 2.0))
        if rng.random() < 0.15:
            s = _gamma(s, rng.uniform(0.7, 1.5))
        out[i] = s
    return standardize_batch(out)


@dataclass(frozen=True)
class ViewAugment:
    """Blur / noise / contrast / gamma view augmentation (each with probability p), then re-standardise.

    `contrast` is affine and therefore undone by the re-standardisation (kept for
    the reference's strong view); `gamma` is the non-affine intensity change.
    """

    blur: tuple[float, float] | None = (0.0, 3.0)
    noise: tuple[float, float] | None = (0.0, 0.15)
    contrast: tuple[float, float] | None = None
    gamma: tuple[float, float] | None = None
    shading: float | None = None  # max log-amplitude of an illumination ramp (`_shading`)
    background: float | None = None  # max amplitude (x patch std) of an additive smooth field (`_background`)
    p: float = 0.25

    def __call__(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        for i in range(x.shape[0]):
            s = out[i]
            if self.blur is not None and rng.random() < self.p:
                s = _blur(s, rng.uniform(*self.blur))
            if self.noise is not None and rng.random() < self.p:
                s = _noise(rng, s, rng.uniform(*self.noise))
            if self.contrast is not None and rng.random() < self.p:
                s = _contrast(s, np.exp(rng.uniform(np.log(self.contrast[0]), np.log(self.contrast[1]))))
            if self.gamma is not None and rng.random() < self.p:
                s = _gamma(s, np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
            if self.shading is not None and rng.random() < self.p:
                s = _shading(rng, s, rng.uniform(0, self.shading))
            if self.background is not None and rng.random() < self.p:
                s = _background(rng, s, rng.uniform(0, self.background), rng.uniform(24, 64))
            out[i] = s
        return standardize_batch(out)


def _geometry_only(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    return x


WEAK = ViewAugment()
STRONG = ViewAugment(blur=(1.0, 4.0), noise=(0.1, 0.35), contrast=(0.33, 3.0), p=0.5)
# FixMatch's strong view without blur (size-changing) and with gamma instead of the no-op contrast
STRONG_INTENSITY = ViewAugment(blur=None, noise=(0.1, 0.35), gamma=(0.5, 2.0), p=0.5)
VIEW_AUGMENTS = {"none": _geometry_only, "noise": ViewAugment(blur=None, noise=(0.0, 0.15), p=0.5),
                 "weak": WEAK, "strong": STRONG, "strong-intensity": STRONG_INTENSITY,
                 "noise-shading": ViewAugment(blur=None, noise=(0.0, 0.15), shading=float(np.log(3)), p=0.5),
                 "noise-background": ViewAugment(blur=None, noise=(0.0, 0.15), shading=float(np.log(3)), background=2.0, p=0.5)}
assert set(VIEW_AUGMENTS) == set(VIEWS), "method.VIEWS names the views defined here"
