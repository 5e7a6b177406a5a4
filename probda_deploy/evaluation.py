"""Evaluate a model on labeled images: per-image dice (hard, soft), IoU, foreground, consensus.

    report = evaluate_model("run/best.pt", "target/images", "target/labels", samples=16)
    write_eval(report, "eval/")            # per_image.csv + summary.json
    write_report(report, "eval/report")    # probda_deploy.report: HTML with panels

MODEL is a probda checkpoint (.pt, PUNet or UNet, evaluated with torch), an
export folder `NAME.probda` (evaluated with onnxruntime, the same latent draws
as `probda segment`), or a torch module. A file that cannot be read becomes one
entry of `report.failed` and the others are still evaluated.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .data.io import list_images, read_image, read_label
from .data.pairs import match_labels
from .errors import LabelMatchError, ProbdaError
from .files import write_text_atomic
from .method import ALL_MAPS, check_samples, latent_eps
from .metrics import CalibrationBins, image_metrics, object_metrics
from .runtime.instances import LEAST_CERTAIN, InstanceConfig, instance_config, label_planes, least_certain, plane_objects

log = logging.getLogger(__name__)

ROW_FIELDS = ("name", "dice_hard", "dice_soft", "iou", "foreground_pred", "foreground_true", "mean_consensus",
              "object_f1_50", "object_f1_50_95", "panoptic_quality")
METRICS = ROW_FIELDS[1:]
OBJECT_METRICS = ("object_f1_50", "object_f1_50_95", "panoptic_quality")  # instance labels only


def summary_key(metric: str) -> str:
    """Key of a per-image metric's mean in the summary: dice_hard -> mean_dice_hard; mean_consensus and the
    object metrics (object_f1_50, ...: means over images with instance labels) keep their names."""
    return metric if metric.startswith("mean_") or metric in OBJECT_METRICS else f"mean_{metric}"
Predictor = Callable[[np.ndarray, str], dict[str, np.ndarray]]  # (image (H, W) or (Z, H, W), file name) -> maps


@dataclass(frozen=True)
class ImageRow:
    """Metrics of one image; label-based values are None without labels."""

    name: str
    dice_hard: float | None
    dice_soft: float | None
    iou: float | None
    foreground_pred: float
    foreground_true: float | None
    mean_consensus: float
    object_f1_50: float | None = None
    object_f1_50_95: float | None = None
    panoptic_quality: float | None = None
    image: str = ""
    label: str = ""


@dataclass(frozen=True)
class ImageMaps:
    """What the picture panels need for one image (middle slice of stacks); (H, W) float32 each."""

    image: np.ndarray
    prob: np.ndarray
    consensus: np.ndarray
    std: np.ndarray
    label: np.ndarray | None = None


@dataclass
class EvalReport:
    """Result of `evaluate_model`.

    Attributes:
        rows: one ImageRow per evaluated image, in input order.
        failed: (file, error message) of images that could not be evaluated.
        maps: ImageMaps of the kept images (worst and best few by hard dice) by name.
        calibration: pixel histograms over all images (labels only).
        objects: the LEAST_CERTAIN objects with the lowest mean consensus over all images
            (`probda segment --instances` rows plus `image`, and `z` for stacks): the ones to check by hand.
    """

    model: str
    kind: str
    device: str
    provider: str
    samples: int
    seed: int
    threshold: float
    seed_height: float = InstanceConfig.seed_height
    min_size: int = InstanceConfig.min_size
    split: float = InstanceConfig.split
    rows: list[ImageRow] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    maps: dict[str, ImageMaps] = field(default_factory=dict)
    calibration: CalibrationBins = field(default_factory=CalibrationBins)
    objects: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def has_labels(self) -> bool:
        return any(r.dice_hard is not None for r in self.rows)

    @property
    def summary(self) -> dict[str, Any]:
        """Means over images plus run facts (the content of summary.json)."""
        means = {}
        for key in METRICS:
            vals = [getattr(r, key) for r in self.rows if getattr(r, key) is not None]
            means[summary_key(key)] = float(np.mean(vals)) if vals else None
        return {
            **means,
            "n_images": len(self.rows),
            "n_failed": len(self.failed),
            "failed": [{"file": f, "error": e} for f, e in self.failed],
            "model": self.model,
            "kind": self.kind,
            "samples": self.samples,
            "seed": self.seed,
            "threshold": self.threshold,
            "seed_height": self.seed_height,
            "min_size": self.min_size,
            "split": self.split,
            "device": self.device,
            "provider": self.provider,
            "seconds": round(self.seconds, 3),
            "calibration": self.calibration.to_dict() if self.has_labels else None,
            "least_certain_objects": self.objects,
        }

    def row(self, name: str) -> ImageRow | None:
        return next((r for r in self.rows if r.name == name), None)


def evaluate_model(
    model: Any,
    images: str | Path | list[str | Path],
    labels: str | Path | None = None,
    *,
    samples: int = 16,
    seed: int = 0,
    device: str = "auto",
    threshold: float = 0.5,
    seed_height: float = InstanceConfig.seed_height,
    min_size: int = InstanceConfig.min_size,
    split: float = InstanceConfig.split,
    keep: int = 6,
    keep_names: Iterable[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[str, ImageRow | None, str], None] | None = None,
) -> EvalReport:
    """Predict every image and compare with its label.

    Args:
        model: checkpoint path (.pt), export folder (NAME.probda), or a PUNet/UNet module.
        images: image files, folders or globs.
        labels: labels folder (paired by file stem, see data.pairs); None: predictions only
            (label-based metrics are None).
        samples: K prior samples per image (1 for UNets).
        seed: seed of the latent draws.
        device: auto, cpu or cuda.
        threshold: on the mean probability for the hard mask.
        seed_height, min_size, split: instance separation of the predictions (`InstanceConfig`), scored
            against instance labels.
        keep: keep the panel maps of this many images (worst half, best half by hard dice;
            the first ones without labels).
        keep_names: also keep the maps of these image names (e.g. another report's kept ones).
        on_start: called with the number of images.
        on_image: called per image as (name, row or None, error message).

    Returns:
        The EvalReport.

    Raises:
        ConfigError: bad option values; ProbdaError: unusable model or no images.
    """
    check_samples(samples)
    cfg = instance_config(threshold, seed_height, min_size, split)  # also checks the threshold
    t0 = time.perf_counter()
    pairs, failed = _pairs(images, labels)
    predict, info = load_predictor(model, samples=samples, seed=seed, device=device)
    report = EvalReport(samples=samples if info["kind"] != "unet" else 1, seed=seed, threshold=threshold,
                        seed_height=seed_height, min_size=min_size, split=split, **info)
    report.failed.extend(failed)
    for f, e in failed:
        on_image and on_image(Path(f).name, None, e)
    on_start and on_start(len(pairs) + len(failed))
    pinned = set(keep_names or ())
    for img_path, lab_path in pairs:
        try:
            row, maps, objects = _evaluate_one(predict, img_path, lab_path, cfg, report.calibration)
        except ProbdaError as e:
            report.failed.append((str(img_path), str(e)))
            on_image and on_image(img_path.name, None, str(e))
            continue
        report.rows.append(row)
        report.maps[row.name] = maps
        report.objects = least_certain(report.objects + objects, LEAST_CERTAIN)
        _prune_maps(report, keep, pinned)
        on_image and on_image(row.name, row, "")
    report.seconds = time.perf_counter() - t0
    return report


def _pairs(images, labels) -> tuple[list[tuple[Path, Path | None]], list[tuple[str, str]]]:
    """(image, label) pairs; images without a usable label become failures, not a crash."""
    if labels is None:
        return [(p, None) for p in list_images(images)], []
    try:
        return list(match_labels(images, labels)), []
    except LabelMatchError:
        pass
    pairs, failed = [], []
    for img in list_images(images):
        try:
            pairs += match_labels([img], labels)
        except LabelMatchError as e:
            failed.append((str(img), str(e)))
    return pairs, failed


def _evaluate_one(predict: Predictor, img_path: Path, lab_path: Path | None, cfg: InstanceConfig,
                  calib: CalibrationBins) -> tuple[ImageRow, ImageMaps, list[dict]]:
    threshold = cfg.threshold
    image = read_image(img_path)
    ids = None if lab_path is None else read_label(lab_path, shape=image.shape, image_path=img_path, binary=False)
    label = None if ids is None else (ids != 0).astype(np.float32)
    slices = image[None] if image.ndim == 2 else image
    maps = predict(image, img_path.name)  # (Z, H, W) maps of stacks, (H, W) of 2D images
    maps = {key: (maps[key][None] if image.ndim == 2 else maps[key]).astype(np.float32)
            for key in ALL_MAPS if key in maps}
    fg_pred = float((maps["prob"] >= threshold).mean())
    boundary = maps.get("boundary")  # boundary models: instances split at the predicted boundaries, as `segment` does
    instances = label_planes(maps["prob"], cfg, boundary)  # as `probda segment` labels them
    objects = ({"image": img_path.name, **r} for r in plane_objects(instances, maps, stack=image.ndim == 3))
    values: dict[str, Any] = {"foreground_pred": fg_pred, "mean_consensus": float(maps["consensus"].mean())}
    if label is None:
        values.update(dice_hard=None, dice_soft=None, iou=None, foreground_true=None)
    else:
        lab = label[None] if label.ndim == 2 else label
        metrics = image_metrics(maps["prob"], lab, threshold)
        values.update({k: metrics[k] for k in ("dice_hard", "dice_soft", "iou", "foreground_true")})
        if ids.max() > 1:  # instance labels: objects of the prediction (seeded watershed) against them
            values.update(_object_values(instances, ids[None] if ids.ndim == 2 else ids))
        calib.update(maps["prob"], maps["consensus"], lab, threshold=threshold)
    row = ImageRow(name=img_path.name, image=str(img_path), label="" if lab_path is None else str(lab_path), **values)
    z = len(slices) // 2
    kept = ImageMaps(image=slices[z], prob=maps["prob"][z], consensus=maps["consensus"][z], std=maps["std"][z],
                     label=None if label is None else (label[None] if label.ndim == 2 else label)[z])
    return row, kept, least_certain(objects, LEAST_CERTAIN)


def _object_values(instances: list[np.ndarray], ids: np.ndarray) -> dict[str, float]:
    """Object F1 at IoU 0.5, mean F1 over IoU 0.5-0.95 and panoptic quality of per-slice instances, averaged over slices."""
    per_slice = [object_metrics(inst, t) for inst, t in zip(instances, ids)]
    return {k: float(np.mean([m[k] for m in per_slice])) for k in OBJECT_METRICS}


def _prune_maps(report: EvalReport, keep: int, pinned: set[str]) -> None:
    """Keep maps of the worst ceil(keep/2) and best floor(keep/2) images (+ pinned names)."""
    free = [n for n in report.maps if n not in pinned]
    if len(free) <= keep:
        return
    if not report.has_labels:
        drop = free[keep:]
    else:
        score = {r.name: (r.dice_hard if r.dice_hard is not None else math.inf) for r in report.rows}
        order = sorted(free, key=lambda n: score[n])
        n_worst = (keep + 1) // 2
        retain = set(order[:n_worst]) | set(order[len(order) - (keep - n_worst):] if keep - n_worst else [])
        drop = [n for n in free if n not in retain]
    for name in drop:
        del report.maps[name]


# --------------------------------------------------------------------------- models
def load_predictor(model: Any, *, samples: int, seed: int, device: str) -> tuple[Predictor, dict[str, str]]:
    """A function (image (H, W) or (Z, H, W) float32, file name) -> {"prob", "consensus", "std"} and facts about it.

    Checkpoints and modules run on the torch backend, export folders on onnxruntime, both through the
    one engine (`backends.load_backend`) with the latent draws of `probda segment`, so a checkpoint and
    its export give the same maps.

    Returns:
        (predict, {"model", "kind", "device", "provider"}).

    Raises:
        CheckpointError, RuntimeModelError: unusable model path.
    """
    from .backends import load_backend
    from .runtime import MemorySink, predict_image

    backend = load_backend(model, device=device)

    def predict(image: np.ndarray, name: str) -> dict[str, np.ndarray]:
        planes = image.shape[0] if image.ndim == 3 else 1
        eps = [latent_eps(seed, name, samples, backend.latent_dim, z) if backend.kind == "punet" else None for z in range(planes)]
        sink = MemorySink(image.shape)
        predict_image(backend, image, sink, eps=eps)
        return sink.result()

    label = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    providers = ", ".join(backend.providers)
    dev = "cuda" if "cuda" in providers.lower() else "cpu"
    provider = providers if providers.startswith("torch") else f"onnxruntime {providers}"
    return predict, {"model": label, "kind": backend.kind, "device": dev, "provider": provider}


# --------------------------------------------------------------------------- files
def write_eval(report: EvalReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `out_dir/per_image.csv` and `out_dir/summary.json` (atomically).

    Returns:
        (csv path, json path).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*ROW_FIELDS, "image", "label"], lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: ("" if v is None else v) for k, v in asdict(row).items()})
    csv_path = write_text_atomic(out_dir / "per_image.csv", buf.getvalue())
    json_path = write_text_atomic(out_dir / "summary.json", json.dumps(report.summary, indent=2) + "\n")
    return csv_path, json_path
