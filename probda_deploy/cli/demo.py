"""`probda demo`: the whole product on embedded synthetic data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import Device, err, handle_errors, make_progress, out, require_extra, resolve_device, setup_logging


def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for data, runs and outputs.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[Device, typer.Option("--device")] = Device("auto"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Synthetic data -> train -> adapt -> export ONNX -> segment -> bioimage.io -> report (minutes on a CPU)."""
    require_extra("train", "probda demo")
    require_extra("zoo", "probda demo")
    setup_logging(quiet=True)
    from ..demo import run_demo

    dev = resolve_device(device)
    err.print(f"demo folder: [bold]{output}[/]  device: {dev}")
    t0 = time.perf_counter()
    with make_progress(quiet) as progress:

        def factory(description: str, total: int):
            task = progress.add_task(description, total=total, info="")

            def cb(it, tot, logs):
                val = f" val dice {logs['val_dice']:.3f}" if "val_dice" in logs else ""
                progress.update(task, completed=it, info=f"loss {logs.get('loss', 0):.4f}{val}")
            return cb

        def stage(name: str) -> None:
            if not quiet:
                progress.console.print(f"[bold cyan]>[/] {name}")

        result = run_demo(output, seed=seed, device=dev, progress=factory, stage=stage)
    table = Table(title=f"probda demo: {time.perf_counter() - t0:.0f}s on {dev} "
                        f"(stages: {', '.join(f'{k} {v:.0f}s' for k, v in result.timings.items())})", title_justify="left")
    table.add_column("result")
    table.add_column("value")
    for what, value in result.rows:
        table.add_row(what, value)
    table.add_row("onnxruntime providers used", result.provider)
    out.print(table)
    arts = Table(title="artifacts written", title_justify="left")
    arts.add_column("what")
    arts.add_column("path", overflow="fold")
    for what, path in result.artifacts:
        arts.add_row(what, str(path))
    out.print(arts)


def register(app: typer.Typer) -> None:
    app.command("demo")(handle_errors(demo))
