"""Does adaptation help? Target dice over several synthetic shifts, seeds and methods.

    python benchmarks/adaptation.py [--out benchmarks/_adaptation] [--seeds 0 1 2]
        [--shifts appearance dim-gradient haze ...] [--rows all|core|masking|teachers|fixmatch|fixmatch-alone|fixmatch-ablation|joint] [--punet punet-small] [--quick]

For every shift the table first prints its preconditions, measured with the PUNet
source model on the labeled target test images: source dice, the share of error
pixels whose consensus is < 1 (errors the samples are unsure of, which consensus
filtering can leave out) and the share of error pixels farther than 3 px from an
object border (errors that are not just a border placement). Self-training can
only fix errors that are uncertain; border placement is set by how the source
labels were drawn and no pseudo-label can move it.

Then one row per method: mean target dice over seeds ± standard deviation, and a
second table with what else a user gets from the same models on the test images:
soft dice, mean consensus (how sure the deployed model's samples are; the
uncertainty outputs rest on it) and object F1 at IoU 0.5 (`probda segment
--instances`).
Adaptation rows also print the label-free verdict of each run (health.json)
against the sign of its true change, and how much validation dice the label-free
checkpoint choice (the latest healthy one) loses against the checkpoint that true
dice would pick.
Fixed seeds, CPU, 2 threads (`--threads`). Record the output in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
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
from probda_deploy.errors import TrainingStopped
from probda_deploy.metrics import dice_hard, dice_soft, object_metrics
from probda_deploy.backends import load_backend
from probda_deploy.runtime.instances import separate_instances
from probda_deploy.training.adapt import adapt
from probda_deploy.training.self_training import AdaptConfig
from probda_deploy.training.config import TrainConfig
from probda_deploy.training.source import train_source

SHIFTS = ("appearance", "size-shape", "density", "blur-noise", "dim-gradient", "target-gradient", "haze")
MT = AdaptConfig(batch_size=4, patch_size=96)  # `probda adapt` defaults (1000 iterations); EMA momentum follows the run
ADAPT_ROWS = {
    "UNet mean-teacher (confidence mask)": ("unet", MT),
    "PUNet mean-teacher masking": ("punet", MT),  # pseudo-labels from the frozen source model (default)
    "PUNet EMA-teacher masking": ("punet", replace(MT, teacher="ema")),  # the paper's teacher
    "PUNet EMA-teacher none": ("punet", replace(MT, teacher="ema", filter="none")),
    "PUNet mean-teacher weighting": ("punet", replace(MT, filter="weighting")),
    "PUNet mean-teacher none": ("punet", replace(MT, filter="none")),
    "PUNet FixMatch masking (EMA labels, alignment)": ("punet", replace(MT, strategy="fixmatch")),
    "PUNet joint AdaMT masking": ("punet", replace(MT, joint=True)),
}
ABLATION_ROWS = {  # FixMatch one factor at a time (--rows fixmatch-ablation); not in "all"
    "PUNet FixMatch masking, the model labels (reference)": ("punet", replace(MT, strategy="fixmatch", teacher="model", student_view="strong-intensity")),
    "PUNet FixMatch masking, no alignment": ("punet", replace(MT, strategy="fixmatch", distribution_alignment=False)),
    "PUNet FixMatch masking, strong-intensity view": ("punet", replace(MT, strategy="fixmatch", student_view="strong-intensity")),
    "PUNet joint AdaMatch masking": ("punet", replace(MT, strategy="fixmatch", joint=True)),
}
FIXMATCH = ("PUNet mean-teacher masking", "PUNet FixMatch masking (EMA labels, alignment)")
ROW_SETS = {"core": ("PUNet mean-teacher masking", "PUNet mean-teacher none"), "masking": ("PUNet mean-teacher masking",),
            "fixmatch": FIXMATCH, "fixmatch-alone": FIXMATCH[1:], "fixmatch-ablation": (*FIXMATCH, *ABLATION_ROWS),
            "joint": ("PUNet joint AdaMT masking", "PUNet joint AdaMatch masking"),
            "teachers": ("PUNet mean-teacher masking", "PUNet EMA-teacher masking", "PUNet EMA-teacher none")}


def otsu(img: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(img, 1.0)
    return (smooth > threshold_otsu(smooth)).astype(np.float32)


def test_set(pairs) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, instance labels) pairs."""
    out = []
    for img_path, lab_path in pairs:
        img = read_image(img_path)
        out.append((img, read_label(lab_path, shape=img.shape, binary=False)))
    return out


def scores_of(predict, data) -> dict[str, float]:
    """Mean over the test images: hard and soft dice, mean consensus, object F1@0.5 of `separate_instances`."""
    rows = []
    for img, ids in data:
        maps = predict(img)
        lab = ids > 0
        rows.append({"dice": dice_hard(maps["prob"], lab), "soft": dice_soft(maps["prob"], lab),
                     "consensus": float(np.mean(maps["consensus"])) if "consensus" in maps else np.nan,
                     "f1": object_metrics(separate_instances(maps["prob"]), ids)["object_f1_50"]})
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def model_predictor(ckpt: Path):
    backend = load_backend(ckpt, device="cpu")
    return lambda img: backend.predict(img, k=16, seed=0)


def preconditions(ckpt: Path, data) -> dict[str, float]:
    """Source dice, share of error pixels with consensus < 1, share farther than 3 px from a border."""
    predict = model_predictor(ckpt)
    dice, unsure, far, n_err = [], 0, 0, 0
    for img, lab in data:
        maps = predict(img)
        lab = lab > 0
        err = (maps["prob"] >= 0.5) != lab
        border = lab ^ ndimage.binary_erosion(lab)
        dist = ndimage.distance_transform_edt(~border)
        dice.append(dice_hard(maps["prob"], lab))
        unsure += int((maps["consensus"][err] < 1).sum())
        far += int((dist[err] > 3).sum())
        n_err += int(err.sum())
    return {"source_dice": float(np.mean(dice)), "err_unsure": unsure / max(n_err, 1), "err_far": far / max(n_err, 1)}


def selection_regret(run: Path) -> float | None:
    """True dice lost by best.pt (the label-free choice) against the validation checkpoint with the highest true dice."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lines = [m for m in lines if "val_dice" in m and "stop" not in m]
    if not lines:
        return None
    chosen = max((m for m in lines if m.get("best")), key=lambda m: m["iteration"], default=lines[-1])
    return max(m["val_dice"] for m in lines) - chosen["val_dice"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/_adaptation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS))
    ap.add_argument("--rows", choices=("all", *ROW_SETS), default="all")
    ap.add_argument("--iterations", type=int, default=MT.iterations, help="adaptation iterations per run")
    ap.add_argument("--punet", default="punet-small", help="PUNet variant of the source model (e.g. punet-small-fast)")
    ap.add_argument("--quick", action="store_true", help="tiny budget smoke run")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, size, it_src = (4, 96, 20) if args.quick else (12, 192, 200)
    it_ad = 10 if args.quick else args.iterations
    rows = ADAPT_ROWS if args.rows == "all" else {k: v for k, v in {**ADAPT_ROWS, **ABLATION_ROWS}.items() if k in ROW_SETS[args.rows]}
    results: dict = {}  # (shift, row) -> list of scores_of dicts, one per seed
    checks = {"verdict": [], "regret": []}
    pre: dict = {}
    t_all = time.perf_counter()
    for seed in args.seeds:
        root = args.out / f"seed{seed}"
        src_img, src_lab = write_dataset(root / "source", n_images=n, shape=(size, size), domain="source", seed=seed)
        sources = {}
        for kind, model in (("punet", args.punet), ("unet", "unet-small")):
            cfg = TrainConfig(model=model, iterations=it_src, batch_size=4, patch_size=96, lr=1e-3,
                              val_every=max(10, it_src // 2), seed=seed)
            run = root / f"source_{kind}"
            train_source(src_img, src_lab, run_dir=run, config=cfg, resume=(run / "latest.pt").exists())
            sources[kind] = run / "latest.pt"
        for shift in args.shifts:
            t_img, t_lab = write_dataset(root / shift / "target", n_images=n, shape=(size, size), domain=shift, seed=seed)
            test = test_set(match_labels(*write_dataset(root / shift / "test", n_images=max(2, n // 2),
                                                        shape=(size, size), domain=shift, seed=seed + 100)))
            pre.setdefault(shift, []).append(preconditions(sources["punet"], test))
            for name, predict in (("Otsu threshold", lambda img: {"prob": otsu(img)}),
                                  ("UNet source", model_predictor(sources["unet"])),
                                  ("PUNet source", model_predictor(sources["punet"]))):
                results.setdefault((shift, name), []).append(scores_of(predict, test))
            src_dice = {kind: results[(shift, f"{label} source")][-1]["dice"] for kind, label in (("punet", "PUNet"), ("unet", "UNet"))}
            for name, (kind, cfg) in rows.items():
                run = root / shift / ("adapt_" + name.split(" (")[0].replace(" ", "_"))
                cfg = replace(cfg, iterations=it_ad, val_every=max(5, it_ad // 3), seed=seed)
                t = time.perf_counter()
                verdict = "?"
                try:
                    if not (run / "health.json").exists():
                        adapt(sources[kind], t_img, run_dir=run, config=cfg, target_labels=t_lab,
                              source_images=src_img, source_labels=src_lab, resume=(run / "latest.pt").exists())
                    verdict = json.loads((run / "health.json").read_text())["verdict"]
                    scores = scores_of(model_predictor(run / "best.pt"), test)
                except TrainingStopped:
                    verdict = "collapsed"
                    best = run / "best.pt"
                    scores = scores_of(model_predictor(best if best.exists() else sources[kind]), test)
                dice = scores["dice"]
                results.setdefault((shift, name), []).append(scores)
                change = dice - src_dice[kind]
                if abs(change) >= 0.02:
                    checks["verdict"].append((verdict == "improved") == (change > 0) and verdict != "unchanged")
                regret = selection_regret(run) if (run / "metrics.jsonl").exists() else None
                if regret is not None:
                    checks["regret"].append(regret)
                lost = "?" if regret is None else f"{regret:.4f}"
                print(f"  seed {seed} {shift} {name}: dice {dice:.3f} ({change:+.3f}), verdict {verdict}, "
                      f"validation dice lost by the label-free pick: {lost}, {time.perf_counter() - t:.0f}s", flush=True)
    from machine import describe_cpu

    print(f"\n{n} source / {n} target train images and {max(2, n // 2)} target test images of {size}x{size} per seed; "
          f"seeds {args.seeds}; source {it_src} it, adaptation {it_ad} it (patch 96, batch 4); "
          f"PUNet {args.punet}; CPU {describe_cpu(torch.get_num_threads())}; "
          f"total {time.perf_counter() - t_all:.0f}s\n")
    names = ["Otsu threshold", "UNet source", "PUNet source", *rows]
    _print_table(args.shifts, results, pre, names)
    _print_extra(args.shifts, results, names)
    _print_paired(args.shifts, results, pre)
    verdicts, regrets = checks["verdict"], checks["regret"]
    print(f"- label-free verdict agrees with the sign of the true change (|change| >= 0.02): {sum(verdicts)} of {len(verdicts)} runs")
    if regrets:
        print(f"- label-free checkpoint choice (latest healthy) within 0.005 validation dice of the true-dice choice: "
              f"{sum(r <= 0.005 for r in regrets)} of {len(regrets)} runs; dice lost: mean {np.mean(regrets):.4f}, "
              f"max {max(regrets):.4f}")


def _fmt(vals: list[float]) -> str:
    return f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"


def _print_table(shifts, results, pre, names) -> None:
    print("| method | " + " | ".join(shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for label, key in (("source dice (PUNet)", "source_dice"), ("errors unsure (consensus < 1)", "err_unsure"),
                       ("errors > 3 px from a border", "err_far")):
        print(f"| *{label}* | " + " | ".join(f"{np.mean([p[key] for p in pre[s]]):.2f}" for s in shifts) + " |")
    for name in names:
        print(f"| {name} | " + " | ".join(_fmt([r["dice"] for r in results[(s, name)]]) for s in shifts) + " |")


def _print_extra(shifts, results, names) -> None:
    print("\nThe same models: soft dice / mean consensus / object F1@0.5, means over seeds\n")
    print("| method | " + " | ".join(shifts) + " |")
    print("|---|" + "---|" * len(shifts))
    for name in names:
        cells = []
        for s in shifts:
            m = {k: np.mean([r[k] for r in results[(s, name)]]) for k in ("soft", "consensus", "f1")}
            cells.append(" / ".join("-" if np.isnan(v) else f"{v:.3f}" for v in m.values()))
        print(f"| {name} | " + " | ".join(cells) + " |")


def _print_paired(shifts, results, pre) -> None:
    """The paired comparisons, by seed: masking against its source model and against unfiltered self-training."""
    mask, none, src = "PUNet mean-teacher masking", "PUNet mean-teacher none", "PUNet source"
    if not all((s, name) in results for s in shifts for name in (mask, none)):
        return
    print("\nPaired by seed (mean ± sd of the differences); 'beats' = masking's mean minus unfiltered's mean is larger "
          "than the seed spread (sd) of either row\n")
    print("| shift | errors unsure | masking - source (hard dice) | masking - unfiltered: hard dice | beats | soft dice | beats |")
    print("|---|---|---|---|---|---|---|")
    for s in shifts:
        cells = [f"{np.mean([p['err_unsure'] for p in pre[s]]):.2f}",
                 _fmt([a["dice"] - b["dice"] for a, b in zip(results[(s, mask)], results[(s, src)])])]
        for key in ("dice", "soft"):
            a, b = [r[key] for r in results[(s, mask)]], [r[key] for r in results[(s, none)]]
            spread = max(np.std(a), np.std(b))
            cells += [_fmt([x - y for x, y in zip(a, b)]), "yes" if np.mean(a) - np.mean(b) > spread else "no"]
        print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
