"""`probda import`: convert a checkpoint of the paper's code or torch-em into a probda checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..method import TORCH_EM_NORMS
from .common import choices, handle_errors, out, require_extra, setup_logging


Norm = choices("Norm", ("none", *TORCH_EM_NORMS))


@handle_errors
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint saved by the paper's code or torch-em (.pt).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="probda checkpoint to write (.pt).")],
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Fully unpickle files the safe loaders refuse. Unpickling runs code stored in the file: "
            "only for checkpoints whose origin you trust.",
        ),
    ] = False,
    use_teacher: Annotated[
        Optional[bool],
        typer.Option(
            "--use-teacher/--use-student",
            help="Import the mean-teacher weights (teacher_state) or the student (model_state). "
            "Default: the teacher if the checkpoint has one.",
            show_default=False,
        ),
    ] = None,
    norm: Annotated[
        Optional[Norm],
        typer.Option(help="torch-em norm type, only needed when the weights do not tell it."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output path.")] = False,
) -> None:
    """Import a Probabilistic UNet checkpoint of the paper's reference code or torch-em.

    The configuration is inferred from the weight shapes; the probda checkpoint
    gives the same outputs for the same input and latent z.
    """
    require_extra("train", "probda import")
    setup_logging(quiet)
    from ..models.checkpoint import save_checkpoint
    from ..models.importer import import_checkpoint

    norm_arg = None if norm is None else (None if norm is Norm("none") else norm.value)
    kwargs = {} if norm is None else {"norm": norm_arg}
    result = import_checkpoint(checkpoint, trust=trust, teacher=use_teacher, **kwargs)
    save_checkpoint(result.checkpoint, output)
    if quiet:
        out.print(str(output))
        return
    _render(checkpoint, output, result)


def _render(src: Path, dst: Path, result) -> None:
    table = Table(title=f"{result.model_class} inferred from {src.name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("layout", result.layout)
    table.add_row("weights", result.state_used)
    table.add_row("loaded", {"weights_only": "weights only", "inert": "inert unpickling (no code run)",
                             "trusted": "full unpickling (--trust)"}[result.load_mode])
    if result.source_iteration is not None:
        table.add_row("iteration", str(result.source_iteration))
    for key, value in result.config.items():
        table.add_row(key, str(value))
    out.print(table)
    for note in result.notes:
        out.print(f"[dim]note:[/] {note}")
    out.print(f"wrote [bold]{dst}[/] (device: cpu)")


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
