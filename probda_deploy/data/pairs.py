"""Pair images with labels by file stem."""

from __future__ import annotations

from pathlib import Path

from ..errors import LabelMatchError
from .io import is_image_file, list_images

LABEL_SUFFIXES = ("_masks", "_mask", "_labels", "_label", "_seg")


def _base_stem(path: Path) -> str:
    stem = path.stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    return stem


def _label_key(path: Path) -> str:
    stem = _base_stem(path)
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def match_labels(images: str | Path | list[Path], labels: str | Path | None = None) -> list[tuple[Path, Path]]:
    """Pair each image with its label file.

    Rules: with a labels folder, a label has the image's stem, optionally with a
    `_masks`/`_labels` (etc.) suffix. Without one, labels sit next to the images
    as `NAME_masks.tif` / `NAME_labels.tif` and those files are not images.

    Raises:
        LabelMatchError: images without a label or with several (all listed, one line each).
    """
    if labels is None:
        folder = Path(images) if not isinstance(images, list) else None
        files = list_images(images)
        label_files = [f for f in files if _label_key(f) != _base_stem(f)]
        image_files = [f for f in files if f not in set(label_files)]
        if folder is None:
            raise LabelMatchError("labels: give a labels folder (-l/--labels) when images are given as a list")
    else:
        image_files = list_images(images)
        labels = Path(labels)
        if not labels.is_dir():
            raise LabelMatchError(f"{labels}: labels folder does not exist")
        label_files = sorted(p for p in labels.iterdir() if is_image_file(p))
    by_key: dict[str, list[Path]] = {}
    for lab in label_files:
        by_key.setdefault(_label_key(lab), []).append(lab)
    where = labels if labels is not None else "next to the images"
    pairs, problems = [], []
    for img in image_files:
        cands = by_key.get(_base_stem(img), [])
        if not cands:
            problems.append(f"{img}: no label file found in {where} (expected {_base_stem(img)}.tif or {_base_stem(img)}_masks.tif)")
        elif len(cands) > 1:
            problems.append(f"{img}: several label files match ({', '.join(c.name for c in cands)}); keep one")
        else:
            pairs.append((img, cands[0]))
    if problems:
        if len(problems) > 1:
            problems.append(f"{len(problems)} of {len(image_files)} images have no unique label; fix the labels or remove the images")
        raise LabelMatchError("\n".join(problems))
    return pairs
