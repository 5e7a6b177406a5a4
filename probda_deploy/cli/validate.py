"""`probda validate PACKAGE.zip`: run bioimageio.core's test_model on a model zoo package (offline)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import err, handle_errors, out, require_extra, setup_logging


class WeightFormat(str, Enum):
    all = "all"
    onnx = "onnx"
    torchscript = "torchscript"


@handle_errors
def validate(
    package: Annotated[Path, typer.Argument(help="bioimage.io package (.zip) or its rdf.yaml.", show_default=False)],
    weight_format: Annotated[WeightFormat, typer.Option("--weight-format", "-w", help="Test only this weights format.")] = WeightFormat.all,
    device: Annotated[Optional[str], typer.Option("--device", help="Device for bioimageio.core, e.g. cpu (default: its choice).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final line.")] = False,
) -> None:
    """Test a bioimage.io package the way the model zoo does: reproduce the test outputs, run parametrized sizes."""
    require_extra("zoo", "probda validate")
    setup_logging(quiet)
    from ..model_zoo.validate import validate_package

    summary = validate_package(
        package, weight_format=None if weight_format is WeightFormat.all else weight_format.value,
        devices=[device] if device else None,
    )
    if not quiet:
        for name, status in summary.tests:
            mark = "[green]passed[/]" if status == "passed" else "[bold red]failed[/]"
            out.print(f"  {mark} {name}", highlight=False, soft_wrap=True)
        for msg in summary.errors:
            err.print(f"[red]error:[/] {msg.splitlines()[0][:400]}", highlight=False, soft_wrap=True)
    formats = ", ".join(f"{k} {v}" for k, v in summary.formats.items()) or "no weights tested"
    versions = " ".join(f"{k} {v}" for k, v in summary.versions.items())
    line = f"{package}: {summary.status} ({formats}) in {summary.seconds:.1f}s on device {device or 'default'}; {versions}"
    if summary.passed:
        out.print(f"[bold green]ok[/] {line}", highlight=False, soft_wrap=True)
        return
    err.print(f"[bold red]failed[/] {line}; run `bioimageio test {package}` for details", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
