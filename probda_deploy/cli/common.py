"""Shared CLI plumbing: consoles, error handling, devices, run folders, progress.

Nothing here imports torch at module level: commands that run exported models
must work where torch is not installed.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Callable

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import ProbdaError
from ..method import CONSENSUS_RULES, DEVICES

out = Console()
err = Console(stderr=True)


def choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum of `values` (each member named and valued by its string) for Typer options."""
    return Enum(name, {v: v for v in values}, type=str)


ConsensusRule = choices("ConsensusRule", CONSENSUS_RULES)
Device = choices("Device", DEVICES)


class _OncePerMessage(logging.Filter):
    """Drop a message already shown (the same warning from several processes or passes over a file)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.levelno}:{record.getMessage()}"
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging(quiet: bool = False) -> None:
    """Library warnings go to stderr through rich, each message once; --quiet keeps only warnings."""
    root = logging.getLogger("probda_deploy")
    for h in list(root.handlers):  # one handler, and a fresh "already shown" set per command
        if isinstance(h, RichHandler):
            root.removeHandler(h)
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    handler.addFilter(_OncePerMessage())
    root.addHandler(handler)
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False


def require_extra(extra: str, what: str) -> None:
    """Exit 2, before anything is done, with one line naming the pip extra when `what` needs modules this
    install lacks (`extras.EXTRAS`)."""
    from rich.markup import escape

    from ..extras import missing

    gone = missing(extra)
    if gone:
        line = f"{what} needs {', '.join(gone)}, not installed here: pip install \"probda[{extra}]\""
        err.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=2)


def handle_errors(fn: Callable) -> Callable:
    """Turn ProbdaError into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ProbdaError as e:
            for line in str(e).splitlines() or [type(e).__name__]:  # an error may list several files, one per line
                err.print(f"[bold red]error:[/] {line}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            err.print("[red]interrupted[/]")
            raise typer.Exit(code=130) from None

    return wrapper


def resolve_device(device: Device | str) -> str:
    """auto -> cuda if torch sees a GPU, else cpu; cuda without a GPU falls back to cpu with a warning."""
    from ..backends import torch_device

    return torch_device(Device(device).value)


def new_run_dir(command: str, output: Path | None) -> Path:
    """`output`, or a new `./runs/<command>-<timestamp>/`."""
    if output is not None:
        return output
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{command}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{command}-{stamp}-{n}"
    return path


def newest_checkpoint(root: Path = Path("runs")) -> Path:
    """best.pt of the most recently modified run under ./runs."""
    cands = sorted(root.glob("*/best.pt"), key=lambda p: p.stat().st_mtime) if root.is_dir() else []
    if not cands:
        raise ProbdaError(f"{root}/: no run with a best.pt found; give a checkpoint path")
    return cands[-1]


def make_progress(quiet: bool) -> Progress:
    """A rich progress bar with count, rate-friendly columns and ETA (disabled by --quiet)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
