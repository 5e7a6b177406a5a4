"""Draw docs/instances.png: instances of a demo target image, coloured, with the least certain objects outlined.

    make demo                                   # once: writes demo_out/ (adapted.probda, target_test/)
    .venv/bin/python docs/make_instances_figure.py --demo demo_out --out docs/instances.png

Segments one labeled target test image of the demo with the demo's adapted export
(`probda segment --instances` as a library call: the same seeded watershed and object
table) and draws three panels: the image, the instances in random colours with the
least certain objects (lowest mean consensus, `FileResult.objects.least_certain`) outlined
in red and numbered, and the consensus map with the same outlines.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from probda_deploy.files import atomic_path  # noqa: E402
from probda_deploy.runtime import segment  # noqa: E402


def draw(image: np.ndarray, instances: np.ndarray, consensus: np.ndarray, least: list[dict], out: Path) -> Path:
    """Three panels (image, instances + outlines, consensus + outlines) as a PNG at `out`."""
    rng = np.random.default_rng(0)
    colours = np.vstack([[0, 0, 0, 1], np.c_[rng.uniform(0.25, 1, (int(instances.max()), 3)), np.ones(int(instances.max()))]])
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.3), dpi=90)
    axes[0].imshow(image, cmap="gray")
    axes[0].set_title("target image")
    axes[1].imshow(instances, cmap=ListedColormap(colours), interpolation="nearest", vmin=0, vmax=len(colours) - 1)
    axes[1].set_title(f"{int(instances.max())} instances")
    shown = axes[2].imshow(consensus, cmap="magma", vmin=0, vmax=1)
    axes[2].set_title("consensus")
    fig.colorbar(shown, ax=axes[2], fraction=0.046, pad=0.02)
    for ax in axes[1:]:
        for rank, row in enumerate(least, 1):
            ax.contour(instances == row["id"], levels=[0.5], colors="red", linewidths=2)
            ax.text(row["centroid_x"], row["centroid_y"], str(rank), color="yellow", fontsize=9, ha="center", va="center",
                    fontweight="bold")
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"red: the {len(least)} least certain objects (lowest mean consensus), 1 = least certain", fontsize=9)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"), help="folder written by `probda demo`")
    parser.add_argument("--image", default="img_001.tif", help="a file in DEMO/target_test/images")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("instances.png"))
    args = parser.parse_args()
    path = args.demo / "target_test" / "images" / args.image
    with tempfile.TemporaryDirectory() as tmp:
        report = segment(args.demo / "adapted.probda", path, tmp, samples=args.samples, device="cpu",
                         outputs="consensus,instances,objects")
        (result,) = report.results
        if result.status != "done":
            raise SystemExit(result.error)
        instances, consensus = (tifffile.imread(Path(tmp) / f"{path.stem}_{k}.tif") for k in ("instances", "consensus"))
    out = draw(tifffile.imread(path), instances, consensus, list(result.objects.least_certain), args.out)
    print(f"{out}: {result.objects.count} objects, {result.objects.uncertain} flagged uncertain, "
          f"{out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
