"""Synthetic nuclei-like images with instance labels, and a domain-shifted variant.

The source domain is a clean fluorescence-like image; the target domain adds
stronger blur, noise, an illumination gradient, lower contrast, a brighter
background and a different object brightness distribution: the kind of shift
a new microscope brings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from .io import write_tiff_atomic


@dataclass(frozen=True)
class DomainStyle:
    """Imaging conditions of a synthetic domain."""

    blur: float = 1.0
    noise: float = 0.04
    background: float = 0.1
    contrast: float = 1.0
    gradient: float = 0.0
    brightness: tuple[float, float] = (0.6, 1.0)
    texture: float = 0.15
    radius: tuple[float, float] = (5.0, 13.0)
    # share of objects with a dim core (hollow nuclei, e.g. nucleoli or other stains) and its relative brightness
    hollow: float = 0.0
    hollow_level: float = 0.3
    density: float = 1.0
    # out-of-focus light: large blurred blobs (per 100^2 px) added to the image, as bright as dim nuclei;
    # background in the labels
    haze: float = 0.0


DOMAINS = {
    "source": DomainStyle(),
    # a new microscope: blurrier, noisier, lower contrast, dimmer objects, a mild illumination ramp
    "target": DomainStyle(blur=2.0, noise=0.1, background=0.3, contrast=0.5, gradient=0.1, brightness=(0.25, 1.0), texture=0.3),
    # as "target" with a strong illumination gradient: the bright side's background outshines the dim
    # side's objects, and source models are confidently wrong there (consensus cannot filter that out)
    "target-gradient": DomainStyle(blur=2.0, noise=0.1, background=0.3, contrast=0.5, gradient=0.4, brightness=(0.25, 1.0), texture=0.3),
    # appearance: textured nuclei, many with dim cores, a wide brightness spread
    "appearance": DomainStyle(blur=1.0, noise=0.05, background=0.1, texture=0.45, brightness=(0.2, 1.0), hollow=0.6),
    # size and shape: larger, elongated nuclei
    "size-shape": DomainStyle(radius=(8.0, 22.0), brightness=(0.4, 1.0)),
    # density: crowded, touching nuclei
    "density": DomainStyle(density=2.5, brightness=(0.4, 1.0)),
    # blur and noise: a lower-resolution, noisier camera
    "blur-noise": DomainStyle(blur=2.5, noise=0.15, background=0.15),
    # dim objects on a brighter background with an illumination gradient
    "dim-gradient": DomainStyle(noise=0.06, background=0.3, contrast=0.6, gradient=0.25, brightness=(0.15, 0.8), texture=0.2),
    # out-of-focus haze: blurred blobs from other planes, as bright as the dimmer nuclei
    "haze": DomainStyle(blur=1.5, noise=0.06, brightness=(0.3, 1.0), haze=1.5),
}


def make_nuclei(rng: np.random.Generator, shape: tuple[int, int] = (256, 256), *, style: DomainStyle = DomainStyle(),
                density: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W) uint16 and its instance labels (H, W) uint16."""
    h, w = shape
    n = max(1, int(rng.poisson(density * style.density * h * w / 1800)))
    labels = np.zeros(shape, np.uint16)
    signal = np.zeros(shape, np.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(*style.radius), rng.uniform(*style.radius)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
        v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
        inside = (u**2 + v**2) <= 1.0
        free = inside & (labels == 0)
        if free.sum() < 0.6 * inside.sum():
            continue
        labels[free] = i
        signal[free] = rng.uniform(*style.brightness)
        if style.hollow > 0 and rng.random() < style.hollow:
            core = free & ((u**2 + v**2) <= rng.uniform(0.3, 0.6))
            signal[core] *= style.hollow_level
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    texture /= texture.std() + 1e-9
    img = signal * (1 + style.texture * texture)
    img = ndimage.gaussian_filter(img, style.blur) * style.contrast
    if style.haze > 0:
        haze = np.zeros(shape, np.float64)
        for _ in range(int(rng.poisson(style.haze * h * w / 1e4))):
            haze[int(rng.uniform(0, h)), int(rng.uniform(0, w))] += 1.0
        sigma = rng.uniform(8.0, 16.0)  # one depth of field per image
        haze = ndimage.gaussian_filter(haze, sigma) * 2 * np.pi * sigma**2  # each blob peaks at ~1
        img = img + style.contrast * rng.uniform(0.2, 0.6) * haze
    ramp = (xx / max(w - 1, 1) * np.cos(rng.uniform(0, 2 * np.pi)) + yy / max(h - 1, 1) * np.sin(rng.uniform(0, 2 * np.pi)))
    img = img + style.background + style.gradient * (ramp - ramp.min())
    img = img + rng.normal(0, style.noise, size=shape)
    img = np.clip(img, 0, None)
    img = (img / max(img.max(), 1e-9) * 40000 + 200).astype(np.uint16)
    return img, _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    lut = np.zeros(int(ids.max()) + 1, np.uint16)
    lut[ids] = np.arange(len(ids), dtype=np.uint16)
    return lut[labels]


def write_dataset(out_dir: str | Path, *, n_images: int = 20, shape: tuple[int, int] = (256, 256),
                  domain: str = "source", seed: int = 0) -> tuple[Path, Path]:
    """Write `out_dir/images/img_NNN.tif` and `out_dir/labels/img_NNN.tif`.

    Returns:
        The images folder and the labels folder.
    """
    out = Path(out_dir)
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain '{domain}'; choose one of {', '.join(DOMAINS)}")
    style = DOMAINS[domain]
    rng = np.random.default_rng([seed, 0 if domain == "source" else 1])
    img_dir, lab_dir = out / "images", out / "labels"
    for i in range(n_images):
        img, lab = make_nuclei(rng, shape, style=style)
        write_tiff_atomic(img_dir / f"img_{i:03d}.tif", img)
        write_tiff_atomic(lab_dir / f"img_{i:03d}.tif", lab)
    return img_dir, lab_dir
