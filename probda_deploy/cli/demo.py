"""`probda demo`: the whole product on embedded synthetic data."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import Device, err, handle_errors, make_progress, out, resolve_device, setup_logging


def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for data, runs and outputs.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[Device, typer.Option("--device")] = Device.auto,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Generate synthetic data and run the pipeline end to end (a few minutes on 2 CPU cores)."""
    setup_logging(quiet)
    from ..demo import run_demo

    dev = resolve_device(device)
    err.print(f"demo folder: [bold]{output}[/]  device: {dev}")
    t0 = time.perf_counter()
    with ExitStack() as stack:
        progress = stack.enter_context(make_progress(quiet))

        def factory(description: str, total: int):
            task = progress.add_task(description, total=total, info="")

            def cb(it, tot, logs):
                val = f" val dice {logs['val_dice']:.3f}" if "val_dice" in logs else ""
                progress.update(task, completed=it, info=f"loss {logs.get('loss', 0):.4f}{val}")
            return cb

        result = run_demo(output, seed=seed, device=dev, progress=factory)
    table = Table(title=f"probda demo ({time.perf_counter() - t0:.0f}s, device {dev})", title_justify="left")
    table.add_column("result")
    table.add_column("value")
    for what, value in result.rows:
        table.add_row(what, value)
    out.print(table)
    arts = Table(title="artifacts", title_justify="left")
    arts.add_column("what")
    arts.add_column("path")
    for what, path in result.artifacts:
        arts.add_row(what, str(path))
    out.print(arts)


def register(app: typer.Typer) -> None:
    app.command("demo")(handle_errors(demo))
