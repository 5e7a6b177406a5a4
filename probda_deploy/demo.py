"""The end-to-end demo on embedded synthetic data: each stage is one library call.

source data -> train PUNet -> shifted target -> adapt (mean teacher, consensus
masking) -> export ONNX -> batch segment with onnxruntime -> bioimage.io
package (validated) -> evaluate source vs adapted with an HTML report.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .data.synthetic import write_dataset
from .training.self_training import AdaptConfig
from .training.health import HEALTH_FILE
from .training.config import TrainConfig

log = logging.getLogger(__name__)

# Sized for 2 CPU cores (~1 s per training step of the small PUNet at 128 px).
DEMO_TRAIN = TrainConfig(model="punet-small", iterations=100, batch_size=4, patch_size=128, lr=1e-3,
                         val_every=50, val_fraction=0.15, augment="robust")
DEMO_ADAPT = AdaptConfig(strategy="mean-teacher", filter="masking", iterations=100, batch_size=4, patch_size=128,
                         samples=16, val_every=50)
# dim objects on a brighter, unevenly lit background: the source model is unsure there, which is
# where consensus-filtered self-training helps (benchmarks/RESULTS.md)
DEMO_SHIFT = "dim-gradient"
STAGES = ("data", "train", "adapt", "export", "segment", "bioimageio", "evaluate")


@dataclass
class DemoResult:
    out_dir: Path
    rows: list[tuple[str, str]] = field(default_factory=list)  # (result, value)
    artifacts: list[tuple[str, Path]] = field(default_factory=list)  # (what, path)
    timings: dict[str, float] = field(default_factory=dict)
    provider: str = ""


def run_demo(out_dir: Path, *, seed: int = 0, device: str = "cpu",
             progress: Callable[[str, int], Callable] | None = None,
             stage: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage; re-running resumes finished training stages from their run folders.

    Args:
        progress: factory `(description, total) -> on_progress(it, total, logs)`.
        stage: called with each stage name as it starts.
    """
    from .evaluation import evaluate_model, write_eval
    from .exporters.onnx import export_onnx
    from .model_zoo.package import export_bioimageio
    from .report.html import write_report
    from .runtime.batch import segment
    from .training.adapt import adapt
    from .training.source import train_source

    out = Path(out_dir)
    res = DemoResult(out)
    timer = _Timer(res, stage)

    with timer("data"):
        src_img, src_lab = write_dataset(out / "source", n_images=20, shape=(256, 256), domain="source", seed=seed)
        tgt_img, _ = write_dataset(out / "target", n_images=12, shape=(256, 256), domain=DEMO_SHIFT, seed=seed)
        test_img, test_lab = write_dataset(out / "target_test", n_images=6, shape=(256, 256), domain=DEMO_SHIFT, seed=seed + 1)
    res.artifacts += [("synthetic source / target / labeled target test data", out)]

    with timer("train"):
        cfg = replace(DEMO_TRAIN, seed=seed)
        run = out / "source_run"
        fit = train_source(src_img, src_lab, run_dir=run, config=cfg, device=device,
                           on_progress=progress("train source PUNet", cfg.iterations) if progress else None,
                           resume=(run / "latest.pt").exists())
    res.rows.append(("source validation dice", f"{fit.last_metrics.get('val_dice', float('nan')):.3f}"))
    source_ckpt = run / "best.pt"
    res.artifacts.append(("source model", source_ckpt))

    with timer("adapt"):
        acfg = replace(DEMO_ADAPT, seed=seed)
        arun = out / "adapt_run"
        adapt(source_ckpt, tgt_img, run_dir=arun, config=acfg, device=device,
              on_progress=progress("adapt (mean teacher, masking)", acfg.iterations) if progress else None,
              resume=(arun / "latest.pt").exists())
    adapted_ckpt = arun / "best.pt"
    res.artifacts.append(("adapted model (EMA model)", adapted_ckpt))
    health = json.loads((arun / HEALTH_FILE).read_text())

    with timer("export"):
        export_dir = export_onnx(adapted_ckpt, out / "adapted.probda", overwrite=True)
    res.artifacts.append(("ONNX export", export_dir))

    with timer("segment"):
        seg = segment(export_dir, test_img, out / "segmentation", seed=seed, overwrite=True, device=device)
    res.provider = f"{', '.join(seg.providers)} {seg.provider_note}".strip()
    res.rows.append(("segmented with onnxruntime", f"{seg.done} images, {seg.images_per_second:.2f} images/s"))
    res.artifacts.append(("segmentations (mask, prob, consensus, std)", out / "segmentation"))

    with timer("bioimageio"):
        zoo = export_bioimageio(adapted_ckpt, out / "adapted_bioimageio.zip", name="probda-demo-adapted",
                                description="probda demo: PUNet adapted to a synthetic domain shift", samples=8, seed=seed)
    res.rows.append(("bioimage.io test_model", ", ".join(f"{k}: {v}" for k, v in zoo.formats.items())))
    res.artifacts.append(("bioimage.io package", zoo.path))

    with timer("evaluate"):
        adapted_eval = evaluate_model(adapted_ckpt, test_img, test_lab, seed=seed, device=device)
        source_eval = evaluate_model(source_ckpt, test_img, test_lab, seed=seed, device=device,
                                     keep_names=list(adapted_eval.maps))
        write_eval(adapted_eval, out / "evaluation" / "adapted")
        write_eval(source_eval, out / "evaluation" / "source")
        report = write_report(adapted_eval, out / "report", compare=source_eval, names=("adapted", "source"))
    s, a = source_eval.summary, adapted_eval.summary
    res.rows.append(("target test dice: source model", f"{s['mean_dice_hard']:.3f} (soft {s['mean_dice_soft']:.3f})"))
    res.rows.append(("target test dice: adapted model", f"{a['mean_dice_hard']:.3f} (soft {a['mean_dice_soft']:.3f})"))
    res.rows.append(("change from adaptation", f"{a['mean_dice_hard'] - s['mean_dice_hard']:+.3f}"))
    if s.get("object_f1_50") is not None:  # the demo's labels are instance labels
        res.rows.append(("target test object F1 at IoU 0.5: source -> adapted",
                         f"{s['object_f1_50']:.3f} -> {a['object_f1_50']:.3f} (panoptic quality "
                         f"{s['panoptic_quality']:.3f} -> {a['panoptic_quality']:.3f})"))
    res.rows.append(("label-free verdict of the adapt run", f"{health['verdict']}: {health['reason']}"))
    res.artifacts.append(("HTML report (source vs adapted)", report))
    return res


class _Timer:
    """`with timer("stage"):` announces the stage and records its duration."""

    def __init__(self, res: DemoResult, stage: Callable[[str], None] | None):
        self.res, self.stage = res, stage

    @contextmanager
    def __call__(self, name: str):
        if self.stage:
            self.stage(name)
        t = time.perf_counter()
        yield
        self.res.timings[name] = time.perf_counter() - t
