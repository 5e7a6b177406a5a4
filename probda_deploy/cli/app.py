"""The `probda` Typer application: one module per command, registered here."""

from __future__ import annotations

import typer

from . import demo, info, train

app = typer.Typer(
    name="probda",
    help="Probabilistic domain adaptation for biomedical image segmentation: "
    "train, adapt, export and deploy Probabilistic UNets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (train, info, demo):
    module.register(app)

# Commands added by other modules register themselves through `register(app)`.
for _name in ("adapt", "evaluate", "export", "segment", "import_cmd", "validate"):
    try:
        _mod = __import__(f"{__package__}.{_name}", fromlist=["register"])
    except ModuleNotFoundError as _e:
        if _e.name != f"{__package__}.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
