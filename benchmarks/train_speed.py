"""Training iterations/s of the PUNet (ELBO step: UNet + prior + posterior + fcomb, Adam) on CPU.

    python benchmarks/train_speed.py [--steps 5]

Prints a markdown table; record it in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from probda_deploy.models import build_model
from probda_deploy.training.losses import supervised_loss

CASES = [("punet-small", 4, 128), ("punet-small", 4, 256), ("punet", 2, 256), ("unet-small", 4, 256)]


def measure(variant: str, batch: int, patch: int, steps: int, channels_last: bool) -> float:
    torch.manual_seed(0)
    model = build_model(variant).train()
    x = torch.randn(batch, 1, patch, patch)
    y = (torch.rand(batch, 1, patch, patch) > 0.8).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, y = x.contiguous(memory_format=torch.channels_last), y.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        loss, _ = supervised_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return 1.0 / (sum(times[1:]) / steps)  # first step is warm-up


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}\n")
    print("| model | batch | patch | it/s | it/s channels_last | s/it |")
    print("|---|---|---|---|---|---|")
    for variant, batch, patch in CASES:
        a = measure(variant, batch, patch, args.steps, False)
        b = measure(variant, batch, patch, args.steps, True)
        print(f"| {variant} | {batch} | {patch} | {a:.2f} | {b:.2f} | {1 / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
