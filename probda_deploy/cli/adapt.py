"""`probda adapt`: self-training adaptation of a source model to unlabeled target images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..method import FILTERS, HIGH, LABELERS, LOSSES, LOW, PATCH_SIZE, SELECT_ON, STRATEGIES, TRAIN_NORMALIZATIONS, VIEWS
from .common import ConsensusRule, Device, choices, err, handle_errors, new_run_dir, out, require_extra, resolve_device, setup_logging


StrategyName = choices("StrategyName", STRATEGIES)
FilterName = choices("FilterName", FILTERS)
SelectOn = choices("SelectOn", SELECT_ON)
Loss = choices("Loss", LOSSES)
View = choices("View", VIEWS)
TeacherName = choices("TeacherName", LABELERS)
Scope = choices("Scope", TRAIN_NORMALIZATIONS)


def adapt(
    source: Annotated[Path, typer.Argument(help="Source model checkpoint (.pt) from `probda train` or `probda import`.")],
    target: Annotated[Path, typer.Option("-t", "--target", help="Folder (or glob) of unlabeled target images.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Run folder; default ./runs/adapt-<timestamp>/.")] = None,
    strategy: Annotated[StrategyName, typer.Option("--strategy", help="mean-teacher (the frozen source model labels a clean view, the student learns it from a noisy one) | fixmatch (the EMA of the model labels the clean view, with distribution alignment; its labels follow the model: on the benchmark's gradient shifts it gained 37-99% of what mean-teacher gains. Not for images the source model gets confidently wrong over large areas, e.g. uneven illumination: its corrections look like drift there and best.pt keeps an early checkpoint. Prefer mean-teacher). The EMA of the student is deployed either way; see docs/method.md.")] = StrategyName("mean-teacher"),
    teacher: Annotated[Optional[TeacherName], typer.Option("--teacher", help="Pseudo-labels from: source (the frozen source model; mean-teacher) | ema (the EMA model; the paper's mean teacher) | model (the model being trained; the reference FixMatch, which collapses on the benchmark's shifts). [default: source for mean-teacher (ema with --from-scratch), ema for fixmatch]")] = None,
    joint: Annotated[bool, typer.Option("--joint", help="Joint training with labeled source batches (AdaMT / AdaMatch).")] = False,
    source_images: Annotated[Optional[Path], typer.Option("--source-images", help="Labeled source images (for --joint).")] = None,
    source_labels: Annotated[Optional[Path], typer.Option("--source-labels", help="Source labels folder (for --joint).")] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="With --joint: start from random weights instead of SOURCE's.")] = False,
    filter_: Annotated[FilterName, typer.Option("--filter", help="Pseudo-label filter: masking (all samples agree), weighting (fraction), none.")] = FilterName("masking"),
    consensus: Annotated[ConsensusRule, typer.Option("--consensus", help="agree (confident and agreeing with the pseudo-label) | confident (reference code).")] = ConsensusRule("agree"),
    samples: Annotated[int, typer.Option("--samples", help="PUNet prior samples per pseudo-label (paper: 16).")] = 16,
    upper: Annotated[float, typer.Option("--threshold-high", "--upper", help="Consensus: a sample is confident foreground at >= this.")] = HIGH,
    lower: Annotated[float, typer.Option("--threshold-low", "--lower", help="Consensus: a sample is confident background at <= this.")] = LOW,
    iterations: Annotated[int, typer.Option("--iterations", help="Total iterations (paper: 10000 on a GPU).")] = 1000,
    patch_size: Annotated[Optional[int], typer.Option("--patch-size", help="[default: 256 on CUDA, 128 on CPU]")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="(paper: 2)")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (paper: 1e-5 at 10k iterations).")] = 3e-4,
    ema: Annotated[Optional[float], typer.Option("--ema", help="EMA momentum of the deployed model (the teacher too with --teacher ema) [default: 1 - 10 / iterations (0.99 for 1000); with --teacher ema 1 - 3 / iterations (0.997)] (paper: 0.999 over 10k steps).")] = None,
    distribution_alignment: Annotated[Optional[bool], typer.Option("--distribution-alignment/--no-distribution-alignment", help="Keep the target foreground fraction at the source model's (per-class ratios) [default: on for fixmatch, off for mean-teacher].")] = None,
    loss: Annotated[Loss, typer.Option("--loss", help="Pseudo-label loss (weighted by the consensus filter).")] = Loss("dice"),
    teacher_view: Annotated[Optional[View], typer.Option("--teacher-view", help="Augmentation of the view pseudo-labels are made on [default: none = flips/rotations only; reference: weak].")] = None,
    student_view: Annotated[Optional[View], typer.Option("--student-view", help="[default: noise-background; reference: weak for mean-teacher, strong for fixmatch].")] = None,
    normalization: Annotated[Scope, typer.Option("--normalization", help="image (whole-image statistics, as prediction) | patch (reference code).")] = Scope("image"),
    target_labels: Annotated[Optional[Path], typer.Option("--target-labels", help="Target labels: also log true dice on held-out target images.")] = None,
    select_on: Annotated[SelectOn, typer.Option("--select-on", help="best.pt = the latest healthy checkpoint (last), the best teacher-student agreement (pseudo) or, with --target-labels, true dice (labels).")] = SelectOn("last"),
    val_every: Annotated[int, typer.Option("--val-every")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its latest.pt.")] = False,
    device: Annotated[Device, typer.Option("--device")] = Device("auto"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Adapt SOURCE to unlabeled TARGET images by consensus-filtered self-training."""
    require_extra("train", "probda adapt")
    setup_logging(quiet)
    from ..errors import ConfigError
    from ..training.adapt import adapt as run_adapt
    from ..training.self_training import AdaptConfig

    if select_on is SelectOn("labels") and target_labels is None:
        raise ConfigError("--select-on labels needs --target-labels")
    if resume and output is None:
        raise ConfigError("--resume needs -o/--output pointing at the run to continue")
    dev = resolve_device(device)
    patch_size = patch_size or PATCH_SIZE[dev]
    cfg = AdaptConfig(strategy=strategy.value, teacher=teacher and teacher.value, joint=joint, filter=filter_.value, consensus=consensus.value,
                      samples=samples, upper=upper, lower=lower, iterations=iterations, batch_size=batch_size,
                      patch_size=patch_size, lr=lr, ema=ema, distribution_alignment=distribution_alignment,
                      reconstruction=loss.value, teacher_view=teacher_view and teacher_view.value,
                      student_view=student_view and student_view.value, normalization=normalization.value,
                      val_every=val_every, select_on=select_on.value, from_scratch=from_scratch, seed=seed)
    cfg.check()  # bad options fail before a run folder or progress bar appears
    run_dir = new_run_dir("adapt", output)
    err.print(f"run folder: [bold]{run_dir}[/]  strategy: {cfg.name}  filter: {cfg.filter}  "
              f"pseudo-labels: {cfg.labeler}{' (made once per image)' if cfg.fixed_labels else ''}  EMA: {cfg.momentum:.4g}  device: {dev}")
    from ..errors import TrainingStopped
    from .progress import training_progress

    with training_progress(f"adapt ({cfg.name})", cfg.iterations, quiet=quiet) as cb:
        try:
            result = run_adapt(source, target, run_dir=run_dir, config=cfg, target_labels=target_labels,
                               source_images=source_images, source_labels=source_labels, device=dev, resume=resume,
                               provenance={"command": " ".join(sys.argv)}, on_progress=cb)
        except TrainingStopped:
            _print_health(run_dir)
            raise
    m = result.last_metrics
    summary = f"agreement {m.get('val_agreement', float('nan')):.3f}"
    if "val_dice" in m:
        summary += f", target val dice {m['val_dice']:.3f}"
    out.print(f"[green]done[/]: {cfg.name} ({cfg.filter}) {result.iterations} iterations in {result.seconds:.0f}s on {result.device}; {summary}")
    deployed = "model" if cfg.labeler == "model" else "EMA model"
    out.print(f"checkpoints (deploy the {deployed}): {run_dir / 'best.pt'}, {run_dir / 'latest.pt'}")
    _print_health(run_dir)


def _print_health(run_dir: Path) -> None:
    import json

    from ..training.health import HEALTH_FILE

    path = run_dir / HEALTH_FILE
    if not path.exists():
        return
    h = json.loads(path.read_text())
    src, ada = h["source"], h["adapted"]
    color = {"improved": "green", "unchanged": "yellow"}.get(h["verdict"], "red")
    out.print(f"health (no labels needed): target foreground {src['foreground']:.3f} -> {ada.get('foreground', float('nan')):.3f}, "
              f"consensus {src['consensus']:.3f} -> {ada.get('consensus', float('nan')):.3f}, "
              f"sample diversity {src['diversity']:.4f} -> {ada.get('diversity', float('nan')):.4f}")
    out.print(f"verdict: [{color}]{h['verdict']}[/] - {h['sentence']} ({path})", highlight=False)
    if "best_iteration" in h:
        best = h["best_iteration"]
        out.print(f"best.pt: the checkpoint of iteration {best}, the last healthy validation" if best else
                  "[yellow]best.pt: the source model's weights: no validation of this run was healthy[/]")


def register(app: typer.Typer) -> None:
    app.command("adapt")(handle_errors(adapt))
