"""Scale benchmark: peak RSS and throughput of an 8192 x 8192 OME-Zarr run, and Dask worker scaling.

    python benchmarks/scale.py [--size 8192] [--tile 1024] [--samples 16] [--features 16] [--files 64] [--file-size 256]

Prints a table (and writes it to --out if given):
1. an 8192 x 8192 float32 image, generated chunk by chunk into a zarr array,
   segmented tiled (--tile px tiles) into OME-Zarr in a child process: peak RSS of
   that process (resource.getrusage RUSAGE_CHILDREN) and its pixels per second;
2. a 1024 x 1024 image predicted untiled in memory: pixels per second;
3. a folder of N images segmented to TIFF on a LocalCluster with 1 and with 2
   single-threaded workers (sessions warmed up first, cluster start-up excluded).
The model is a random punet-small (16 features, depth 4: what users run; --features 8
--depth 3 gives the tiny test model), so the network's cost is realistic.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_export(root: Path, samples: int, features: int = 16, depth: int = 4) -> Path:
    import torch

    from probda_deploy.exporters import cached_export
    from probda_deploy.models import build_model
    from probda_deploy.models.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    ckpt = root / "bench.pt"
    save_checkpoint(make_checkpoint(build_model("punet-small", initial_features=features, depth=depth)), ckpt)
    return cached_export(ckpt, cache_root=root / "cache", samples=samples)[0]


def synthetic(ys, xs) -> np.ndarray:
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    discs = (((yy % 97) - 48) ** 2 + ((xx % 83) - 41) ** 2 < 400).astype(np.float32)
    return discs + 0.3 * ((yy * 7919 + xx * 104729) % 1009).astype(np.float32) / 1009.0


def write_zarr(path: Path, size: int, chunk: int = 1024) -> Path:
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype="float32")
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            arr[y : y + chunk, x : x + chunk] = synthetic(np.arange(y, min(y + chunk, size)), np.arange(x, min(x + chunk, size)))
    return path


def child_big(export: str, src: str, out: str, samples: int, tile: int) -> None:
    """Runs in the child process: the OME-Zarr run only; prints JSON timing."""
    from probda_deploy.runtime import segment

    t = time.perf_counter()
    report = segment(export, src, out, fmt="ome-zarr", samples=samples, tile=tile, device="cpu", overwrite=True)
    seconds = time.perf_counter() - t
    assert report.done == 1, report.failed
    print(json.dumps({"seconds": seconds}))


def bench_big(export: Path, root: Path, size: int, samples: int, tile: int) -> dict:
    src = write_zarr(root / "big.zarr", size)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run([sys.executable, __file__, "--child", str(export), str(src), str(root / "out"), str(samples), str(tile)],
                          capture_output=True, text=True, check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
    return {"seconds": seconds, "px_per_s": size * size / seconds, "peak_rss_mb": max(peak_kb, before) / 1024}


def bench_untiled(export: Path, samples: int, size: int = 1024, repeats: int = 3) -> dict:
    from probda_deploy.runtime import OnnxBackend, latent_eps

    sampler = OnnxBackend(export, device="cpu")
    img = synthetic(np.arange(size), np.arange(size))
    eps = latent_eps(0, "x.tif", samples, sampler.latent_dim)
    sampler.predict(img, eps=eps, tile=None)
    best = min(_timed(lambda: sampler.predict(img, eps=eps, tile=None)) for _ in range(repeats))
    return {"seconds": best, "px_per_s": size * size / best}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_workers(export: Path, root: Path, files: int, size: int, samples: int) -> dict:
    import tifffile
    from distributed import LocalCluster

    from probda_deploy.runtime import segment

    folder = root / "folder"
    folder.mkdir(exist_ok=True)
    for i in range(files):
        tifffile.imwrite(folder / f"im{i:03d}.tif", synthetic(np.arange(size) + 31 * i, np.arange(size)))
    out = {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
            kw = dict(samples=samples, device="cpu", threads=1, scheduler=cluster.scheduler_address, overwrite=True)
            segment(export, sorted(folder.iterdir())[: 2 * workers], root / f"warm{workers}", **kw)
            seconds = _timed(lambda: segment(export, folder, root / f"w{workers}", **kw))
        out[workers] = {"seconds": seconds, "images_per_s": files / seconds}
    return out


def table(big: dict, untiled: dict, workers: dict, args) -> str:
    from machine import describe_cpu

    ratio = big["px_per_s"] / untiled["px_per_s"]
    speedup = workers[2]["images_per_s"] / workers[1]["images_per_s"]
    rows = [
        f"CPU: {describe_cpu()} (onnxruntime's own; the Dask rows: 1 thread per worker)",
        "",
        "| measurement | value | target |",
        "|---|---|---|",
        f"| {args.size}x{args.size} OME-Zarr run, tiles {args.tile}, K={args.samples}: peak RSS | {big['peak_rss_mb']:.0f} MB | <= 1536 MB |",
        f"| {args.size}x{args.size} OME-Zarr run: time | {big['seconds']:.1f} s ({big['px_per_s'] / 1e6:.2f} Mpx/s) | |",
        f"| 1024x1024 untiled in memory | {untiled['seconds']:.2f} s ({untiled['px_per_s'] / 1e6:.2f} Mpx/s) | |",
        f"| tiled OME-Zarr / untiled throughput | {ratio:.2f} | >= 0.90 |",
        f"| {args.files} files {args.file_size}^2, 1 Dask worker x 1 thread | {workers[1]['seconds']:.1f} s ({workers[1]['images_per_s']:.2f} img/s) | |",
        f"| {args.files} files {args.file_size}^2, 2 Dask workers x 1 thread | {workers[2]['seconds']:.1f} s ({workers[2]['images_per_s']:.2f} img/s) | |",
        f"| speed-up 2 vs 1 workers | {speedup:.2f}x | >= 1.7x |",
    ]
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_big(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--files", type=int, default=64)
    p.add_argument("--file-size", type=int, default=256)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="probda-scale-") as tmp:
        root = Path(tmp)
        export = make_export(root, args.samples, args.features, args.depth)
        big = bench_big(export, root, args.size, args.samples, args.tile)
        untiled = bench_untiled(export, args.samples)
        workers = bench_workers(export, root, args.files, args.file_size, args.samples)
    text = table(big, untiled, workers, args)
    print(text)
    if args.out:
        cmd = "python benchmarks/scale.py " + " ".join(sys.argv[1:])
        args.out.write_text(f"# Scale benchmark\n\nCommand: `{cmd}`\n\n{text}\n")


if __name__ == "__main__":
    main()
