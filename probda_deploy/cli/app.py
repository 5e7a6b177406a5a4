"""The `probda` Typer application: one module per command, registered here.

No command module imports torch at import time, so `probda segment` on an
export folder works on the base install, without PyTorch; a command that
needs an extra says which one (`common.require_extra`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import adapt, demo, evaluate, export, import_cmd, info, segment, train, validate

app = typer.Typer(
    name="probda",
    help="Probabilistic domain adaptation for biomedical image segmentation: "
    "train, adapt, export and deploy Probabilistic UNets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"probda {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Probabilistic domain adaptation for biomedical image segmentation: train, adapt, export and deploy Probabilistic UNets."""


for module in (train, adapt, evaluate, export, segment, validate, import_cmd, info, demo):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
