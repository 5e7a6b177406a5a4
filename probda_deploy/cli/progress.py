"""Rich progress callback for training loops."""

from __future__ import annotations

from contextlib import contextmanager

from .common import make_progress


@contextmanager
def training_progress(description: str, total: int, *, quiet: bool = False, start: int = 0):
    """Yields an `on_progress(iteration, total, logs)` callback driving a rich bar."""
    progress = make_progress(quiet)
    with progress:
        task = progress.add_task(description, total=total, completed=start, info="")
        state = {"val": ""}

        def on_progress(it: int, tot: int, logs: dict) -> None:
            if "val_dice" in logs:
                state["val"] = f" val dice {logs['val_dice']:.3f}"
            elif "val_metric" in logs:
                state["val"] = f" val {logs['val_metric']:.3f}"
            progress.update(task, completed=it, total=tot, info=f"loss {logs.get('loss', float('nan')):.4f}{state['val']}")

        yield on_progress
