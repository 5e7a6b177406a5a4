"""`probda train`: source training of a PUNet or UNet."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..method import PATCH_SIZE
from .common import Device, err, handle_errors, new_run_dir, out, require_extra, resolve_device, setup_logging


def train(
    images: Annotated[Path, typer.Option("-i", "--images", help="Folder (or file/glob) of training images.")],
    labels: Annotated[Optional[Path], typer.Option("-l", "--labels", help="Labels folder (same stem, or NAME_masks/_labels); default: label files next to the images.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Run folder; default ./runs/train-<timestamp>/.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="punet | unet | punet-small | punet-small-fast (prior/posterior nets at half width, ~0.7x step time) | unet-small [default: punet-small].")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with training options (command-line flags win).")] = None,
    iterations: Annotated[Optional[int], typer.Option("--iterations", help="Total training iterations [default: 2000].")] = None,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="Patch size in px, multiple of 8 [default: 256 on CUDA, 128 on CPU].")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="[default: 4]")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate [default: 1e-4; paper: 1e-5 PUNet / 1e-4 UNet at 100k iterations].")] = None,
    augment: Annotated[Optional[str], typer.Option("--augment", help="paper (flips) | robust (+ intensity, contrast, gamma, blur, noise, low-res) [default: robust].")] = None,
    normalization: Annotated[Optional[str], typer.Option("--normalization", help="image (patches standardised with their image's statistics, as prediction does) | patch (reference code) [default: image].")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of images held out for validation [default: 0.1].")] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", help="Validate and checkpoint every N iterations [default: 100].")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed [default: 0].")] = None,
    boundaries: Annotated[Optional[bool], typer.Option("--boundaries/--no-boundaries", help="Also learn object boundaries from instance labels (a second output; `probda segment --instances` splits touching objects at them).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its latest.pt.")] = False,
    device: Annotated[Device, typer.Option("--device", help="auto | cpu | cuda")] = Device("auto"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a PUNet (ELBO) or UNet (dice) on labeled source images."""
    require_extra("train", "probda train")
    setup_logging(quiet)
    from ..errors import ConfigError
    from ..training.config import TrainConfig, load_toml
    from ..training.source import train_source

    cfg, model_options = (load_toml(config) if config else (TrainConfig(), {}))
    flags = dict(model=model, iterations=iterations, patch_size=patch_size, batch_size=batch_size, lr=lr,
                 augment=augment, normalization=normalization, val_fraction=val_fraction, val_every=val_every, seed=seed,
                 boundaries=boundaries)
    cfg = replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    dev = resolve_device(device)
    if patch_size is None and "patch_size" not in (_toml_keys(config) if config else set()) and dev == "cpu":
        cfg = replace(cfg, patch_size=PATCH_SIZE["cpu"])
    if resume and output is None:
        raise ConfigError("--resume needs -o/--output pointing at the run to continue")
    run_dir = new_run_dir("train", output)
    err.print(f"run folder: [bold]{run_dir}[/]  model: {cfg.model}  patch {cfg.patch_size}  device: {dev}")
    from .progress import training_progress

    with training_progress("train", cfg.iterations, quiet=quiet) as cb:
        result = train_source(images, labels, run_dir=run_dir, config=cfg, model_options=model_options, device=dev,
                              resume=resume, provenance={"command": " ".join(sys.argv)}, on_progress=cb)
    m = result.last_metrics
    out.print(f"[green]done[/]: {result.iterations} iterations in {result.seconds:.0f}s on {result.device}; "
              f"val dice {m.get('val_dice', float('nan')):.3f} (best val metric {result.best_metric:.4f})")
    out.print(f"checkpoints: {run_dir / 'best.pt'}, {run_dir / 'latest.pt'}; log: {run_dir / 'metrics.jsonl'}")


def _toml_keys(path: Path) -> set[str]:
    import tomllib

    try:
        return set(tomllib.loads(path.read_text()))
    except (OSError, tomllib.TOMLDecodeError):
        return set()


def register(app: typer.Typer) -> None:
    app.command("train")(handle_errors(train))
