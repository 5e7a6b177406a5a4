"""Target dice on the synthetic domain shift: Otsu, source models and adaptation variants.

    python benchmarks/adaptation.py [--out benchmarks/_adaptation] [--quick]

Fixed seeds, CPU. Prints a markdown table; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu

from probda_deploy.data.io import read_image, read_label
from probda_deploy.data.pairs import match_labels
from probda_deploy.data.synthetic import write_dataset
from probda_deploy.metrics import dice_hard, dice_soft
from probda_deploy.models.checkpoint import model_from_checkpoint
from probda_deploy.models.predict import predict_maps
from probda_deploy.training.adapt import adapt
from probda_deploy.training.adaptation import AdaptConfig
from probda_deploy.training.config import TrainConfig
from probda_deploy.training.source import train_source


def evaluate(pairs, predict) -> tuple[float, float]:
    hard, soft = [], []
    for img_path, lab_path in pairs:
        img = read_image(img_path)
        lab = read_label(lab_path, shape=img.shape)
        prob = predict(img)
        hard.append(dice_hard(prob, lab))
        soft.append(dice_soft(prob, lab))
    return float(np.mean(hard)), float(np.mean(soft))


def otsu(img: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(img, 1.0)
    return (smooth > threshold_otsu(smooth)).astype(np.float32)


def model_predictor(ckpt: Path):
    model = model_from_checkpoint(ckpt)
    return lambda img: predict_maps(model, img, k=16, seed=0)["prob"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/_adaptation"))
    ap.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    q = args.quick
    n, size = (6, 96) if q else (10, 160)
    src_img, src_lab = write_dataset(args.out / "source", n_images=n, shape=(size, size), domain="source", seed=0)
    tgt_img, tgt_lab = write_dataset(args.out / "target", n_images=n, shape=(size, size), domain="target", seed=0)
    test = match_labels(*write_dataset(args.out / "target_test", n_images=n // 2, shape=(size, size), domain="target", seed=1))
    grad_img, _ = write_dataset(args.out / "gradient", n_images=n, shape=(size, size), domain="target-gradient", seed=0)
    grad_test = match_labels(*write_dataset(args.out / "gradient_test", n_images=n // 2, shape=(size, size),
                                            domain="target-gradient", seed=1))
    src_test = match_labels(*write_dataset(args.out / "source_test", n_images=n // 2, shape=(size, size), domain="source", seed=1))

    it_src, it_ad = (20, 20) if q else (150, 120)
    base = TrainConfig(iterations=it_src, batch_size=4, patch_size=96, lr=1e-3, val_every=max(10, it_src // 3), seed=0)
    rows, t_all = [], time.perf_counter()

    def row(name, predict, seconds=0.0, pairs=None):
        th, ts = evaluate(pairs or test, predict)
        sh, _ = evaluate(src_test, predict)
        rows.append((name, th, ts, sh, seconds))
        print(f"  {name}: target dice {th:.3f} (soft {ts:.3f}), source dice {sh:.3f}, {seconds:.0f}s", flush=True)

    row("Otsu threshold (no learning)", otsu)
    sources = {}
    for name, cfg in [("UNet source", replace(base, model="unet-small", augment="robust")),
                      ("PUNet source (augment paper)", replace(base, model="punet-small", augment="paper")),
                      ("PUNet source (augment robust)", replace(base, model="punet-small", augment="robust"))]:
        run = args.out / f"{cfg.model}_{cfg.augment}"
        t = time.perf_counter()
        train_source(src_img, src_lab, run_dir=run, config=cfg, resume=(run / "latest.pt").exists())
        sources[name] = run / "latest.pt"
        row(name, model_predictor(run / "latest.pt"), time.perf_counter() - t)

    ad = AdaptConfig(iterations=it_ad, batch_size=4, patch_size=96, lr=1e-4, ema=0.99, val_every=max(10, it_ad // 3), seed=0)
    variants = [
        ("UNet mean-teacher (confidence mask)", "UNet source", ad),
        ("PUNet mean-teacher masking", "PUNet source (augment robust)", ad),
        ("PUNet mean-teacher weighting", "PUNet source (augment robust)", replace(ad, filter="weighting")),
        ("PUNet mean-teacher none", "PUNet source (augment robust)", replace(ad, filter="none")),
        ("PUNet FixMatch masking", "PUNet source (augment robust)", replace(ad, strategy="fixmatch")),
        ("PUNet joint AdaMT masking", "PUNet source (augment robust)", replace(ad, joint=True)),
    ]
    for name, src_name, cfg in variants:
        run = args.out / ("adapt_" + name.replace(" ", "_").replace("(", "").replace(")", ""))
        t = time.perf_counter()
        adapt(sources[src_name], tgt_img, run_dir=run, config=cfg, source_images=src_img, source_labels=src_lab,
              resume=(run / "latest.pt").exists())
        row(name, model_predictor(run / "latest.pt"), time.perf_counter() - t)

    # the strong-illumination-gradient shift: where source models are confidently wrong
    rows.append(("**target-gradient shift**", float("nan"), float("nan"), float("nan"), 0.0))
    row("Otsu threshold [gradient]", otsu, pairs=grad_test)
    best_src = sources["PUNet source (augment robust)"]
    row("PUNet source (augment robust) [gradient]", model_predictor(best_src), pairs=grad_test)
    run = args.out / "adapt_gradient_mt_masking"
    t = time.perf_counter()
    adapt(best_src, grad_img, run_dir=run, config=ad, resume=(run / "latest.pt").exists())
    row("PUNet mean-teacher masking [gradient]", model_predictor(run / "latest.pt"), time.perf_counter() - t, pairs=grad_test)

    print(f"\n{n} source / {n} target train images, {n // 2} target test images, {size}x{size}; "
          f"source {it_src} it, adaptation {it_ad} it; total {time.perf_counter() - t_all:.0f}s\n")
    print("| method | target dice (hard) | target dice (soft) | source dice (hard) | train s |")
    print("|---|---|---|---|---|")
    for name, th, ts, sh, s in rows:
        print(f"| {name} | {th:.3f} | {ts:.3f} | {sh:.3f} | {s:.0f} |".replace("nan", ""))


if __name__ == "__main__":
    main()
