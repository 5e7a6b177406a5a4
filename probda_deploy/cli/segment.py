"""`probda segment MODEL -i INPUT... -o OUT_DIR`: batch segmentation with onnxruntime.

Works without torch for export folders; a `.pt` checkpoint is exported on the
fly (this needs torch) into a cache keyed by its sha256 and reused after that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..method import OUTPUT_FORMATS
from .common import Device, choices, err, handle_errors, make_progress, out, require_extra, setup_logging


OutFormat = choices("OutFormat", OUTPUT_FORMATS)


HELP = "Segment images with an exported model (NAME.probda folder) or a probda checkpoint (.pt)."


def segment(
    model: Annotated[Path, typer.Argument(help="Export folder NAME.probda, or a probda checkpoint .pt (exported on the fly, cached).")],
    more: Annotated[Optional[list[str]], typer.Argument(help="More inputs (files, folders, globs), e.g. from shell globbing.", show_default=False)] = None,
    inputs: Annotated[Optional[list[str]], typer.Option("--input", "-i", help="Image files, folders or glob patterns (repeatable).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "--out", "-o", help="Output folder (required).")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", "-k", min=1, help="Prior samples K (default: the model's, 16).")] = None,
    tile: Annotated[Optional[int], typer.Option(help="Tile size in pixels; 0 = never tile (default: tile images with a side > 1536 px).")] = None,
    halo: Annotated[Optional[int], typer.Option(min=0, help="Context around each tile (default: the network's receptive field).")] = None,
    device: Annotated[Device, typer.Option(help="auto, cpu or cuda (onnxruntime execution provider).")] = Device("auto"),
    threads: Annotated[Optional[int], typer.Option(min=1, help="onnxruntime intra-op threads (default: physical cores).")] = None,
    outputs: Annotated[str, typer.Option(help="Comma-separated subset of mask,prob,consensus,std,boundary,labels,instances,objects (boundary: models trained with --boundaries).")] = "mask,prob,consensus,std",
    instances: Annotated[bool, typer.Option("--instances", help="Also one id per object (NAME_instances.tif, or labels/instances in OME-Zarr; seeded watershed) and the per-object table NAME_objects.csv; the summary lists the least certain objects. Models trained with --boundaries split touching objects at their predicted boundaries.")] = False,
    threshold: Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help="Mask threshold on the mean probability (default 0.5).")] = None,
    seed_height: Annotated[float, typer.Option("--seed-height", help="Instance seeds: h of the h-maxima of the distance transform (px); smaller splits touching objects more, e.g. 0.5 for round crowded nuclei, larger keeps elongated or hollow ones whole.")] = 1.0,
    min_size: Annotated[int, typer.Option("--min-size", help="Instances: objects smaller than this (px) join a touching object or are dropped.")] = 15,
    split: Annotated[float, typer.Option("--split", min=0.0, help="Instances: split objects further by seeds scaled to the objects' size where every piece has at least this fraction of the median object's area (pressed nuclei); 0 = off.")] = 0.6,
    seed: Annotated[int, typer.Option(help="Seed of the latent draws (combined with each file name).")] = 0,
    normalize: Annotated[str, typer.Option(help="Standardisation: image (whole image), tile, or none.")] = "image",
    resume: Annotated[bool, typer.Option("--resume", help="Skip images whose outputs all exist; redo only unwritten blocks of OME-Zarr outputs.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")] = False,
    fmt: Annotated[OutFormat, typer.Option("--format", help="Outputs: tif, ome-zarr, or auto (OME-Zarr for .zarr inputs and images above 4096x4096 px).")] = OutFormat("auto"),
    workers: Annotated[int, typer.Option(min=1, help="Dask LocalCluster worker processes (> 1 runs on Dask).")] = 1,
    scheduler: Annotated[Optional[str], typer.Option(help="Address of an existing Dask scheduler, e.g. tcp://HOST:8786.")] = None,
    preview: Annotated[bool, typer.Option("--preview", help="Also write OUT_DIR/preview/NAME.png: image, mask outline (red), low-consensus pixels (yellow).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars (batch jobs).")] = False,
) -> None:
    """Segment images: NAME_mask.tif, NAME_prob.tif, NAME_consensus.tif, NAME_std.tif (NAME_labels.tif, NAME_instances.tif, NAME_objects.csv)."""
    if _is_checkpoint(model):
        require_extra("train", f"probda segment with a checkpoint ({model.name}); an export folder needs no more")
    if workers > 1 or scheduler:
        require_extra("dask", "probda segment --workers/--scheduler")
    setup_logging(quiet)
    from ..errors import ConfigError
    from ..runtime.batch import segment as run_segment
    from ..method import INSTANCE_OUTPUTS
    from ..runtime.outputs import parse_outputs

    outputs = ",".join(dict.fromkeys([*parse_outputs(outputs), *(INSTANCE_OUTPUTS if instances else ())]))
    inputs = [*(inputs or []), *(more or [])]
    if not inputs:
        raise ConfigError("no inputs; give image files, folders or globs with -i (or after MODEL)")
    if output is None:
        raise ConfigError("no output folder; give one with -o OUT_DIR")
    folder, note = _export_folder(model, quiet=quiet)
    tile_arg = "auto" if tile is None else (None if tile == 0 else tile)
    with make_progress(quiet) as progress:
        files = progress.add_task("segment", total=None, info="")
        blocks = _SubProgress(progress, "  tiles")

        def on_start(total: int) -> None:
            progress.update(files, total=total)

        def on_file(result) -> None:
            if result.status == "failed":
                err.print(f"[bold red]error:[/] {result.error}", markup=True, highlight=False, soft_wrap=True)
            if progress.tasks[files].total is not None:
                progress.update(files, advance=1, info=Path(result.path).name)
            blocks.hide()

        report = run_segment(
            folder, inputs, output, samples=samples, tile=tile_arg, halo=halo, device=device.value, threads=threads,
            outputs=outputs, threshold=threshold, seed_height=seed_height, min_size=min_size, split=split, seed=seed, resume=resume, overwrite=overwrite, normalize=normalize,
            fmt=fmt.value, workers=workers, scheduler=scheduler, preview=preview, on_start=on_start, on_file=on_file,
            on_progress=blocks,
        )
    _summary(report, note)
    if preview:
        previews = [r.preview for r in report.results if r.preview is not None]
        out.print(f"previews: {len(previews)} PNG(s) in {Path(output) / 'preview'}")
    if report.failed:
        raise typer.Exit(code=1)


class _SubProgress:
    """A second progress line (tiles or blocks of the current image), shown while it advances."""

    def __init__(self, progress, label: str):
        self.progress, self.label, self.task = progress, label, None

    def __call__(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task(self.label, total=total, info="")
        self.progress.update(self.task, completed=done, total=total)

    def hide(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
            self.task = None


def _is_checkpoint(model: Path) -> bool:
    """A .pt file (exported on the fly, needs probda[train]); anything else is taken for an export folder."""
    return model.suffix == ".pt" or model.is_file()


def _export_folder(model: Path, *, quiet: bool) -> tuple[Path, str]:
    """Export folder for MODEL; checkpoints go through the export cache (`segment` has checked the train extra)."""
    if not _is_checkpoint(model):
        return model, ""  # an export folder (the runtime names a missing or invalid one)
    from ..exporters.cache import export_for_runtime

    if not quiet:
        err.print(f"[dim]preparing ONNX export of {model} (cached by its sha256)...[/]")
    return export_for_runtime(model)


def _summary(report, note: str) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", f"{report.model} ({report.kind}, K={report.samples})")
    if note:
        table.add_row("source", note)
    table.add_row("files", f"{report.done} segmented, {report.skipped} skipped (resume), {len(report.failed)} failed")
    table.add_row("outputs", str(report.out_dir))
    if report.formats:
        counts = {f: sum(v == f for v in report.formats.values()) for f in ("tif", "ome-zarr")}
        from ..runtime.outputs import ZARR_AUTO_PIXELS

        rule = f"auto: OME-Zarr for .zarr inputs and images above {ZARR_AUTO_PIXELS / 1e6:.1f} Mpx"
        auto = report.requested_format == "auto"
        table.add_row("format", ", ".join(f"{n} {f}" for f, n in counts.items() if n) + (f" ({rule})" if auto else ""))
    for path, (written, total) in report.blocks.items():
        table.add_row("blocks", f"{Path(path).name}: {written} of {total} blocks written" + (" (resumed)" if written < total else ""))
    if report.tiling_note:
        table.add_row("tiling", report.tiling_note)
    table.add_row("engine", report.engine)
    table.add_row("device", f"{report.device} -> provider {', '.join(report.providers)}")
    if report.provider_note:
        table.add_row("warning", f"[yellow]{report.provider_note}[/]")
    table.add_row("speed", f"{report.images_per_second:.2f} images/s ({report.seconds:.1f} s total)")
    objects = [r for r in report.results if r.status == "done" and r.objects is not None]
    if objects:
        table.add_row("objects", f"{sum(r.objects.count for r in objects)} in {len(objects)} image(s), "
                                 f"{sum(r.objects.uncertain for r in objects)} flagged uncertain (mean consensus < 0.5)")
        inexact = sum(r.objects.inexact for r in objects)
        if inexact:
            table.add_row("warning", f"[yellow]{inexact} objects lie in clumps larger than the instance window and may "
                                     "differ from a whole-image run (exact = 0 in NAME_objects.csv)[/]")
    out.print(table)
    if any(r.objects.count for r in objects):
        out.print(_least_certain_table(objects))
    for r in report.failed:
        out.print(f"[red]failed:[/] {r.path}")


def _least_certain_table(results):
    """The least certain objects of the batch (lowest mean consensus): the ones to check by hand."""
    from rich.table import Table

    from ..runtime.instances import least_certain

    rows = least_certain({**row, "image": Path(r.path).name} for r in results for row in r.objects.least_certain)
    stacks = any("z" in row for row in rows)
    table = Table(title=f"the {len(rows)} least certain objects (lowest mean consensus; all objects in NAME_objects.csv)",
                  title_justify="left")
    for name in ("image", "id", *(("z",) if stacks else ()), "y", "x", "area", "consensus", "std", "flag"):
        table.add_column(name, justify="left" if name == "image" else "right")
    for row in rows:
        z = (str(row.get("z", "")),) if stacks else ()
        table.add_row(row["image"], str(row["id"]), *z, f"{row['centroid_y']:.0f}", f"{row['centroid_x']:.0f}",
                      str(row["area"]), f"{row['mean_consensus']:.3f}", f"{row['mean_std']:.3f}",
                      "uncertain" if row["uncertain"] else "")
    return table


def register(app: typer.Typer) -> None:
    app.command("segment", help=HELP)(handle_errors(segment))
