"""Instance separation: object F1@0.5 of `separate_instances` over its settings.

    python benchmarks/instances.py --blockwise [SIZE ...] [--chunk 1024]
    python benchmarks/instances.py [--splits 0.35 0.5] [--heights 1 0.75 0.5 0.3] [--sigmas 0.5 1 1.5 2]
        [--scaled 0.12:0.04 ...] [--real IMAGES LABELS [MODEL ...]] ...

Columns: masks drawn from instance labels (the seeds alone decide: every error is a
split or a merge) of synthetic domains (6 images of 256 px each, fixed seed), the same
masks zoomed x2 (objects twice as large), and with `--real` (repeatable), a labeled image
or folders of images and labels (paired as `probda evaluate` pairs them) and the masks of
models predicting them (`.pt` or export folder; 16 samples, seed 0), as `probda segment
--instances` would make them; a single real image is also zoomed x2.
Rows: the default (InstanceConfig: h-maxima seeds, grown with objects above a 10 px radius,
split by object-scaled seeds into pieces of at least `split` of the median object area), the
default with seeds not grown and with the h-maxima seeds alone (neither grown nor split), the
default with other `--splits`, fixed (sigma, h) in px without the split, and with `--scaled a:b` seeds
scaled to the objects alone (sigma = a x r, h = b x r, r = the median inscribed radius of each
mask's components); the mean and the worst column on the right. Record the output in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

from probda_deploy.data.synthetic import DOMAINS, make_nuclei
from probda_deploy.method import FLOAT_MAPS
from probda_deploy.metrics import object_metrics
from probda_deploy.runtime.instances import InstanceConfig, component_radii, separate_instances, typical

SYNTHETIC = ("source", "density", "size-shape", "appearance")


def cases(real: list[list[str]] | None) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{column: [(mask, instance labels), ...]}; `real`: [IMAGES, LABELS, MODEL...] lists (files or folders)."""
    from probda_deploy.data.io import read_image, read_label
    from probda_deploy.data.pairs import match_labels
    from probda_deploy.evaluation import load_predictor

    out = {}
    for spec in real or []:
        images, labels, *models = spec
        pairs = match_labels(images, labels) if Path(images).is_dir() else [(Path(images), Path(labels))]
        data = [(read_image(i).astype(np.float32), read_label(lab, binary=False), i.name) for i, lab in pairs]
        generic = {"images", "test", "target", "data"}
        tag = next((p for p in reversed(Path(images).resolve().parts) if p not in generic), "real") if Path(images).is_dir() else "real"
        out[f"{tag} labels"[:16]] = [(lab > 0, lab) for _, lab, _ in data]
        for model in models:
            predict, _ = load_predictor(model, samples=16, seed=0, device="cpu")
            name = Path(model).resolve().parent.name if Path(model).is_file() else Path(model).name
            out[f"{tag[:8]} {name[:7]}"] = [(predict(img, n)["prob"] >= 0.5, lab) for img, lab, n in data]
    for domain in SYNTHETIC:
        rng = np.random.default_rng(5)
        labels = [make_nuclei(rng, (256, 256), style=DOMAINS[domain])[1] for _ in range(6)]
        out[f"syn {domain}"] = [(lab > 0, lab) for lab in labels]
    for name in list(out):
        if name.startswith("syn size") or name.startswith("real"):  # the real image's objects twice as large
            out[f"{name[:13]} x2"] = [(ndimage.zoom(m, 2, order=0), ndimage.zoom(lab, 2, order=0)) for m, lab in out[name]]
    return out


def scores(data: dict, config) -> list[float]:
    """Mean object F1@0.5 per column; config(mask) -> InstanceConfig."""
    return [float(np.mean([object_metrics(separate_instances(m.astype(np.float32), config(m)), lab)["object_f1_50"]
                           for m, lab in pairs])) for pairs in data.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=float, nargs="+", default=[0.0], help="more split fractions (0: h-maxima seeds only)")
    ap.add_argument("--heights", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.3])
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    ap.add_argument("--scaled", nargs="*", default=[], metavar="A:B", help="more (sigma, h) per px of radius to try")
    ap.add_argument("--real", nargs="+", action="append", metavar="PATH",
                    help="IMAGES LABELS [MODEL ...]: a labeled image or folders of them, and models to predict masks (repeatable)")
    ap.add_argument("--blockwise", type=int, nargs="*", metavar="SIZE",
                    help="instead: time the OME-Zarr blockwise labelling of a SIZE^2 mosaic of synthetic masks against the "
                         "whole-image one and check that the ids are equal (default sizes 2048 3072)")
    ap.add_argument("--chunk", type=int, default=1024, help="--blockwise: the OME-Zarr chunk (block) size")
    args = ap.parse_args()
    from machine import describe_cpu

    print(f"CPU: {describe_cpu()}")
    if args.blockwise is not None:
        blockwise(args.blockwise or [2048, 3072], args.chunk)
        return
    if any(len(r) < 2 for r in args.real or []):
        ap.error("--real needs IMAGES LABELS and optionally models")
    data = cases(args.real)
    print("object F1@0.5; scaled a:b = sigma a x r, h b x r (r: median inscribed radius of the mask's objects)")
    print(f"{'seeds':>16} " + " ".join(f"{c:>16}" for c in data) + f" {'mean':>6} {'worst':>6}")

    def show(name: str, row: list[float]) -> None:
        print(f"{name:>16} " + " ".join(f"{v:16.3f}" for v in row) + f" {np.mean(row):6.3f} {min(row):6.3f}", flush=True)

    show("default", scores(data, lambda m: InstanceConfig()))
    show("seeds not grown", scores(data, lambda m: InstanceConfig(reference_radius=0)))
    show("h-maxima only", scores(data, lambda m: InstanceConfig(reference_radius=0, split=0)))
    for split in args.splits:
        show(f"split {split:g}", scores(data, lambda m: InstanceConfig(split=split)))
    for sigma in args.sigmas:
        for h in args.heights:
            show(f"sigma {sigma:g} h {h:g}", scores(data, lambda m: InstanceConfig(sigma=sigma, seed_height=h, split=0, reference_radius=0)))
    for ab in args.scaled:
        a, b = (float(v) for v in ab.split(":"))
        show(f"scaled {ab}", scores(data, lambda m: scaled(typical_radius(m), a, b)))


def blockwise(sizes: list[int], chunk: int) -> None:
    """Seconds of `separate_instances` on a whole mosaic and of `label_blocks` on it as an OME-Zarr output
    (LocalExecutor, the instance pass of `probda segment --format ome-zarr`), and whether the ids are equal."""
    import tempfile
    import time

    import zarr

    from probda_deploy.runtime import ome_zarr as oz
    from probda_deploy.runtime.zarr_instances import block_grid, label_blocks

    print(f"blockwise labelling: mosaics of 512 px synthetic masks (domains {', '.join(SYNTHETIC)}), {chunk} px blocks")
    print("| size | objects | whole image (s) | blockwise (s) | blockwise / whole | ids equal |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(5)
    for size in sizes:
        n = -(-size // 512)
        tiles = [[make_nuclei(rng, (512, 512), style=DOMAINS[SYNTHETIC[(i + j) % 4]])[1] > 0 for j in range(n)] for i in range(n)]
        prob = np.where(np.block(tiles)[:size, :size], 0.9, 0.1).astype(np.float32)
        t = time.perf_counter()
        whole = separate_instances(prob)
        t_whole = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            layout = oz.ZarrLayout(shape=prob.shape, chunk=chunk, levels=1, channels=FLOAT_MAPS, mask=True, instances=True)
            path = Path(tmp) / "m.ome.zarr.partial"
            oz.create_output(path, layout, metadata={})
            for i, tile in enumerate(block_grid(layout, 0)):
                y0, y1, x0, x1 = tile.core
                block = {"prob": prob[y0:y1, x0:x1], "consensus": np.ones((y1 - y0, x1 - x0), np.float32),
                         "std": np.zeros((y1 - y0, x1 - x0), np.float32)}
                oz.write_block(path, layout, key=f"b{i}", origin=(y0, x0), maps={**block, "mask": (block["prob"] >= 0.5).astype(np.uint8)})
            t = time.perf_counter()
            label_blocks(path, layout, InstanceConfig())
            t_blocks = time.perf_counter() - t
            equal = bool(np.array_equal(zarr.open_group(str(path), mode="r")["labels/instances/0"][:], whole))
        print(f"| {size}^2 | {int(whole.max())} | {t_whole:.1f} | {t_blocks:.1f} | {t_blocks / t_whole:.2f} | {equal} |", flush=True)


def typical_radius(mask: np.ndarray) -> float:
    """The median inscribed radius of the mask's components (`instances.component_radii`)."""
    return typical(component_radii(mask, InstanceConfig.min_size))


def scaled(radius: float, a: float, b: float) -> InstanceConfig:
    """Seeds for objects of `radius` px: sigma a x radius, h b x radius (at least 0.1 px)."""
    return InstanceConfig(sigma=a * radius, seed_height=max(b * radius, 0.1), split=0, reference_radius=0)


if __name__ == "__main__":
    main()
