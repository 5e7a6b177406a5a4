"""What moves a self-training model in its first steps: FixMatch's labeler, optimizer and view, one at a time.

    python benchmarks/fixmatch_dynamics.py --root /tmp/fm_bench --shift dim-gradient [--seed 0]
        [--teacher model|ema] [--student-view none|noise-background|strong-intensity|...] [--alignment]
        [--optimizer adam|sgd] [--lr 3e-4] [--iterations 60] [--every 10]

Reuses the data and PUNet source model that `benchmarks/adaptation.py --out ROOT` wrote for that seed.
Steps `SelfTrainingStrategy` (FixMatch) by hand and, every `--every` steps, prints on the held-out target
patches (8 samples): foreground against the source model's, mean consensus, hard dice of the deployed
model, how far the weights moved (||theta - theta_0||), and the step's loss, kept fraction and pseudo-label
foreground. `--optimizer sgd` is FixMatch's published optimizer (SGD, Nesterov momentum 0.9).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from probda_deploy.data.pairs import match_labels
from probda_deploy.data.patches import ImageSet, PatchSampler, grid_patches, load_image_set
from probda_deploy.models.checkpoint import load_checkpoint, model_from_checkpoint
from probda_deploy.training.self_training import AdaptConfig, SelfTrainingStrategy
from probda_deploy.training.health import snapshot
from probda_deploy.training.loop import _seed_step, _to_tensors
from probda_deploy.training.validation import dice_scores


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, required=True, help="the --out folder of benchmarks/adaptation.py")
    ap.add_argument("--shift", default="dim-gradient")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher", default="model", choices=("model", "ema"))
    ap.add_argument("--student-view", default="none")
    ap.add_argument("--alignment", action="store_true")
    ap.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = args.root / f"seed{args.seed}"
    cfg = replace(AdaptConfig(batch_size=4, patch_size=96, iterations=args.iterations), strategy="fixmatch",
                  teacher=args.teacher, student_view=args.student_view, distribution_alignment=args.alignment,
                  lr=args.lr, seed=args.seed)
    model = model_from_checkpoint(load_checkpoint(root / "source_punet/latest.pt")).train()
    target = root / args.shift / "target"
    data = load_image_set(match_labels(target / "images", target / "labels"), labeled=True)
    train, val = data.split(cfg.val_fraction, np.random.default_rng([cfg.seed, 17]))  # as `adapt` splits
    vx, vy = grid_patches(val, cfg.patch_size, normalization=cfg.normalization)
    source = snapshot(model, vx)
    strategy = SelfTrainingStrategy(model, cfg, PatchSampler(ImageSet(train.images, None, train.names), cfg.patch_size),
                                    {"x": vx, "y": vy}, source_fraction=source.foreground)
    params = list(model.parameters())
    opt = (torch.optim.Adam(params, lr=args.lr) if args.optimizer == "adam"
           else torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True))
    theta0 = torch.cat([p.detach().flatten().clone() for p in params])
    print(f"{args.shift} seed {args.seed}: FixMatch, labels from {cfg.labeler}, student view {cfg.views[1]}, "
          f"alignment {cfg.aligned}, {args.optimizer} lr {args.lr:g}")
    print("step | foreground x source | consensus | dice | ||theta - theta_0|| | loss | kept | pseudo foreground")
    acc: dict[str, list[float]] = {}

    def probe(step: int) -> None:
        now = snapshot(strategy.deployed, vx)
        moved = float((torch.cat([p.detach().flatten() for p in params]) - theta0).norm())
        logs = " | ".join(f"{np.mean(acc[k]):.4f}" if k in acc else "-" for k in ("loss", "kept", "pseudo_foreground"))
        print(f"{step} | {now.foreground / max(source.foreground, 1e-6):.2f} | {now.consensus:.3f} | "
              f"{dice_scores(now.prob, vy)['dice_hard']:.3f} | {moved:.3f} | {logs}", flush=True)

    probe(0)
    for it in range(args.iterations):
        batch = _to_tensors(strategy.sample_batch(_seed_step(cfg.seed, it)), torch.device("cpu"))
        loss, logs = strategy.step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        strategy.on_step_end(it + 1)
        for k, v in {"loss": float(loss.detach()), **logs}.items():
            acc.setdefault(k, []).append(v)
        if (it + 1) % args.every == 0:
            probe(it + 1)
            acc = {}


if __name__ == "__main__":
    main()
