"""The `probda` Typer application: one module per command, registered here.

No command module imports torch at import time, so `probda segment` on an
export folder works on machines without PyTorch.
"""

from __future__ import annotations

import typer

from . import adapt, demo, evaluate, export, import_cmd, info, segment, train, validate

app = typer.Typer(
    name="probda",
    help="Probabilistic domain adaptation for biomedical image segmentation: "
    "train, adapt, export and deploy Probabilistic UNets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (train, adapt, evaluate, export, segment, validate, import_cmd, info, demo):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
