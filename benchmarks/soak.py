"""Soak benchmark: does a long `probda segment` batch keep its memory flat?

    python benchmarks/soak.py [--images 1000] [--size 96] [--samples 16] [--out FILE]

Writes N small float32 images, runs the real CLI (`probda segment DIR -o OUT
--quiet`, one process, TIFF outputs) and samples the child's resident set size
from /proc/PID/status every 0.1 s together with the number of finished images
(counted from the `*_std.tif` outputs, the last one written per image). Prints
RSS after 5%, 10%, 25%, 50%, 75% and 100% of the images, the peak, and the growth
after warm-up (RSS at the end minus RSS at 10% of the images). The model is a
random PUNet of the small configuration (punet-small, 16 features, depth 4): the
number measures the batch machinery (I/O, sessions, per-file buffers), not the network.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHECKPOINTS = (0.05, 0.10, 0.25, 0.50, 0.75, 1.00)


def make_export(root: Path, samples: int) -> Path:
    import torch

    from probda_deploy.exporters.onnx import export_onnx
    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(make_checkpoint(build_model("punet-small")), root / "soak.pt")
    return export_onnx(ckpt, root / "soak.probda", samples=samples)


def write_images(folder: Path, n: int, size: int) -> None:
    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        img = rng.normal(0, 0.2, (size, size))
        for _ in range(4):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(4, 12)]
            img += (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        tifffile.imwrite(folder / f"img{i:05d}.tif", img.astype(np.float32))


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def soak(export: Path, images: Path, out: Path, n: int) -> tuple[list[tuple[int, float]], float, int]:
    """Run the CLI; returns ([(images done, RSS MB)], seconds, exit code)."""
    probda = Path(sys.executable).with_name("probda")
    t0 = time.perf_counter()
    errors = tempfile.TemporaryFile()  # not a pipe: a child with many error lines must never block on it
    proc = subprocess.Popen([str(probda), "segment", str(export), str(images), "-o", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=errors)
    samples: list[tuple[int, float]] = []
    while proc.poll() is None:
        rss = rss_mb(proc.pid)
        done = sum(1 for _ in out.glob("*_std.tif")) if out.is_dir() else 0
        if rss is not None:
            samples.append((done, rss))
        time.sleep(0.1)
    if proc.returncode:
        errors.seek(0)
        print(errors.read().decode()[-4000:], file=sys.stderr)
    errors.close()
    return samples, time.perf_counter() - t0, proc.returncode


def rss_at(samples: list[tuple[int, float]], done: int) -> float:
    """Largest RSS sampled while at most `done` images were finished (>= the first sample)."""
    seen = [rss for d, rss in samples if d <= done]
    return max(seen) if seen else samples[0][1]


def main() -> None:
    from machine import describe_cpu  # here, not at the top: tests/robustness/test_soak.py loads this file by path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export = make_export(root, args.samples)
        write_images(root / "in", args.images, args.size)
        samples, seconds, rc = soak(export, root / "in", root / "out", args.images)
        n_out = sum(1 for _ in (root / "out").glob("*_std.tif"))
    rows = [(f"{int(f * 100)}% ({int(f * args.images)} images)", rss_at(samples, int(f * args.images))) for f in CHECKPOINTS]
    warm = rss_at(samples, int(0.10 * args.images))
    end = rss_at(samples, args.images)
    peak = max(r for _, r in samples)
    lines = [
        f"soak: {args.images} images of {args.size}x{args.size} px, K={args.samples}, punet-small (16 features), "
        f"one process, TIFF outputs; exit code {rc}, {n_out} images segmented in {seconds:.0f} s "
        f"({args.images / seconds:.1f} images/s); CPU {describe_cpu()}",
        "",
        "| images done | RSS (MB) |",
        "|---|---|",
        *[f"| {name} | {rss:.0f} |" for name, rss in rows],
        f"| peak | {peak:.0f} |",
        "",
        f"growth after warm-up (end - 10%): {end - warm:+.1f} MB",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
