"""Side-by-side dice of two models on the same images (e.g. source vs adapted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .figures import new_figure, save_png

COMPARE_SIZE = (880, 360)  # PNG width, height in pixels


def paired_rows(report, compare) -> list[tuple[str, float | None, float | None]]:
    """(name, dice_hard of report, dice_hard of compare) for every image of `report`, in its order."""
    other = {r.name: r.dice_hard for r in compare.rows}
    return [(r.name, r.dice_hard, other.get(r.name)) for r in report.rows]


def plot_compare(pairs: list[tuple[str, float | None, float | None]], path: str | Path, *,
                 names: tuple[str, str] = ("model", "compare")) -> Path:
    """Left: hard dice per image of both models (bars, or a scatter for many images); right: the difference.

    Returns:
        The PNG path; its size is COMPARE_SIZE.
    """
    pairs = [(n, a, b) for n, a, b in pairs if a is not None and b is not None]
    fig = new_figure(COMPARE_SIZE)
    left, right = fig.subplots(1, 2)
    a = np.array([p[1] for p in pairs], float)
    b = np.array([p[2] for p in pairs], float)
    x = np.arange(len(pairs))
    if len(pairs) <= 24:
        left.bar(x - 0.2, b, width=0.4, label=names[1], color="#999999")
        left.bar(x + 0.2, a, width=0.4, label=names[0], color="#1f77b4")
        left.set_xticks(x, [p[0] for p in pairs], rotation=60, fontsize=6)
        left.set(ylim=(0, 1), ylabel="dice (hard)")
        left.legend(fontsize=8)
    else:
        left.plot([0, 1], [0, 1], ls="--", color="gray", lw=1)
        left.scatter(b, a, s=10)
        left.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"dice {names[1]}", ylabel=f"dice {names[0]}")
    left.set_title("dice per image", fontsize=10)
    diff = a - b
    right.bar(x, diff, color=np.where(diff >= 0, "#2ca02c", "#d62728"))
    right.axhline(0, color="black", lw=0.8)
    mean = float(diff.mean()) if len(diff) else float("nan")
    right.set_title(f"{names[0]} - {names[1]} (mean {mean:+.3f})", fontsize=10)
    right.set(ylabel="dice difference", xlabel="image")
    right.set_xticks([])
    return save_png(fig, path)
