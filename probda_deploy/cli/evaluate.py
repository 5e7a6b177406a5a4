"""`probda evaluate MODEL -i IMAGES -l LABELS`: dice, IoU, foreground and consensus per image.

With `--out DIR`: per_image.csv + summary.json; with `--report DIR`: an HTML
report with picture panels and calibration plots; with `--compare OTHER`: the
same images through a second model, side by side (e.g. source vs adapted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Device, err, handle_errors, make_progress, out, require_extra, setup_logging

HELP = "Evaluate a checkpoint (.pt) or export folder (NAME.probda) on labeled images: dice, IoU, consensus."


def evaluate(
    model: Annotated[Path, typer.Argument(help="probda checkpoint (.pt, PUNet or UNet) or export folder NAME.probda.")],
    images: Annotated[list[str], typer.Option("--input", "--images", "-i", help="Image files, folders or globs (repeatable).")],
    labels: Annotated[Path, typer.Option("--labels", "-l", help="Labels folder; labels pair with images by file stem (NAME.tif or NAME_masks.tif).")],
    samples: Annotated[int, typer.Option("--samples", "-k", min=1, help="Prior samples K per image (UNets: 1).")] = 16,
    output: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write per_image.csv and summary.json here.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write an HTML report (index.html + PNGs) here.")] = None,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="A second model to compare on the same images (e.g. the source model).")] = None,
    panels: Annotated[int, typer.Option("--panels", min=0, help="Picture panels in the report (worst and best images).")] = 6,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Threshold on the mean probability for hard dice/IoU.")] = 0.5,
    seed_height: Annotated[float, typer.Option("--seed-height", help="Instance seeds: h of the h-maxima of the distance transform (px); smaller splits touching objects more, e.g. 0.5 for round crowded nuclei, larger keeps elongated or hollow ones whole.")] = 1.0,
    min_size: Annotated[int, typer.Option("--min-size", help="Instances: objects smaller than this (px) join a touching object or are dropped.")] = 15,
    split: Annotated[float, typer.Option("--split", min=0.0, help="Instances: split objects further by seeds scaled to the objects' size where every piece has at least this fraction of the median object's area (pressed nuclei); 0 = off.")] = 0.6,
    seed: Annotated[int, typer.Option(help="Seed of the latent draws.")] = 0,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda.")] = Device("auto"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (batch jobs).")] = False,
) -> None:
    """Evaluate MODEL on IMAGES against LABELS and print a per-image table with means."""
    require_extra("train", "probda evaluate")  # the evaluation engine runs checkpoints and exports alike
    if report is not None:
        require_extra("report", "probda evaluate --report")
    setup_logging(quiet)
    from ..evaluation import evaluate_model, write_eval

    kwargs = dict(samples=samples, seed=seed, device=device.value, threshold=threshold, seed_height=seed_height,
                  min_size=min_size, split=split, keep=panels)
    result = _run(evaluate_model, model, images, labels, quiet=quiet, what="evaluate", **kwargs)
    other = None
    if compare is not None:
        other = _run(evaluate_model, compare, images, labels, quiet=quiet, what="compare", report_errors=False,
                     keep_names=list(result.maps), **kwargs)
    _table(result, other)
    written = []
    if output is not None:
        written += [str(p) for p in write_eval(result, output)]
    if report is not None:
        from ..report import write_report

        written.append(str(write_report(result, report, compare=other, max_panels=panels)))
    _summary(result, other, written)
    if result.failed:
        raise typer.Exit(code=1)


def _run(evaluate_model, model, images, labels, *, quiet: bool, what: str, report_errors: bool = True, **kwargs):
    with make_progress(quiet) as progress:
        task = progress.add_task(what, total=None, info="")

        def on_start(total: int) -> None:
            progress.update(task, total=total)

        def on_image(name: str, row, error: str) -> None:
            if error and report_errors:
                err.print(f"[bold red]error:[/] {error}", markup=True, highlight=False, soft_wrap=True)
            progress.update(task, advance=1, info=name)

        return evaluate_model(model, images, labels, on_start=on_start, on_image=on_image, **kwargs)


HEADERS = {"dice_hard": "dice", "dice_soft": "soft dice", "iou": "IoU", "foreground_pred": "fg pred",
           "foreground_true": "fg true", "mean_consensus": "consensus", "object_f1_50": "F1@0.5",
           "object_f1_50_95": "F1@.5:.95", "panoptic_quality": "PQ"}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _table(result, other) -> None:
    from rich.table import Table

    from ..evaluation import METRICS, OBJECT_METRICS, summary_key

    table = Table(title=f"{result.model} ({result.kind}, K={result.samples})", title_justify="left",
                  caption="diff: dice - dice of the --compare model" if other is not None else None, caption_justify="left")
    keys = METRICS if other is None else ("dice_hard", "dice_soft", "iou", "mean_consensus")  # fit 80 columns
    if other is None:  # object columns only with instance labels; the pixel ones that fit beside them
        has_objects = result.summary["object_f1_50"] is not None
        keys = ("dice_hard", "iou", "mean_consensus", *OBJECT_METRICS) if has_objects else \
            tuple(k for k in METRICS if k not in OBJECT_METRICS)
    table.add_column("image", style="bold", overflow="fold", min_width=11)
    for key in keys:
        table.add_column(HEADERS[key], justify="right", no_wrap=True)
    if other is not None:
        table.add_column("dice cmp", justify="right", no_wrap=True)
        table.add_column("diff", justify="right", no_wrap=True)
    others = {r.name: r.dice_hard for r in other.rows} if other is not None else {}
    for row in result.rows:
        cells = [_fmt(getattr(row, k)) for k in keys]
        if other is not None:
            b = others.get(row.name)
            cells += [_fmt(b), _diff(row.dice_hard, b)]
        table.add_row(row.name, *cells)
    s = result.summary
    cells = [_fmt(s[summary_key(k)]) for k in keys]
    if other is not None:
        b = other.summary["mean_dice_hard"]
        cells += [_fmt(b), _diff(s["mean_dice_hard"], b)]
    table.add_section()
    table.add_row("mean", *cells, style="bold")
    out.print(table)


def _diff(a, b) -> str:
    if a is None or b is None:
        return "-"
    d = a - b
    return f"[{'green' if d >= 0 else 'red'}]{d:+.4f}[/]"


def _objects(summary: dict) -> str:
    from ..evaluation import OBJECT_METRICS

    return ", ".join(f"{HEADERS[k]} {_fmt(summary[k])}" for k in OBJECT_METRICS)


def _summary(result, other, written: list[str]) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    table.add_row("model", f"{result.model} ({result.kind}, K={result.samples})")
    if other is not None:
        table.add_row("compared with", f"{other.model} ({other.kind}, K={other.samples})")
    table.add_row("images", f"{len(result.rows)} evaluated, {len(result.failed)} failed ({result.seconds:.1f} s)")
    if other is not None and result.summary["object_f1_50"] is not None:  # the table above has room for dice only
        table.add_row("objects", _objects(result.summary))
        diff = _diff(result.summary["object_f1_50"], other.summary["object_f1_50"])
        table.add_row("objects (cmp)", f"{_objects(other.summary)}; F1@0.5 diff {diff}")
    table.add_row("device", f"{result.device} -> {result.provider}")
    for path in written:
        table.add_row("wrote", path)
    out.print(table)
    for path, _ in result.failed:
        out.print(f"[red]failed:[/] {path}")


def register(app: typer.Typer) -> None:
    app.command("evaluate", help=HELP)(handle_errors(evaluate))
