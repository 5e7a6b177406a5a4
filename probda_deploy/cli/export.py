"""`probda export [CHECKPOINT] --format onnx|bioimageio`: deployable models from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..method import EXPORT_FORMATS, HIGH, LOW, consensus_spec
from .common import ConsensusRule, choices, err, handle_errors, newest_checkpoint, out, require_extra, setup_logging

HELP = "Export a checkpoint: an ONNX folder for `probda segment`, or a bioimage.io model zoo package."


Format = choices("Format", EXPORT_FORMATS)


def export(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="probda checkpoint (.pt); default: newest runs/*/best.pt.")] = None,
    format: Annotated[Format, typer.Option("--format", "-f", help="onnx (folder NAME.probda) or bioimageio (zip).")] = Format("onnx"),
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="NAME.probda folder (onnx) or OUT.zip (bioimageio).")] = None,
    samples: Annotated[int, typer.Option("--samples", "-k", min=1, help="Default K (onnx) / baked-in K (bioimageio).")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export folder (onnx).")] = False,
    consensus_rule: Annotated[ConsensusRule, typer.Option(help="Consensus rule: agree (probda) or confident (reference code).")] = ConsensusRule("agree"),
    threshold_high: Annotated[float, typer.Option(min=0.5, max=1.0, help="Consensus: a sample is confident foreground at >= this.")] = HIGH,
    threshold_low: Annotated[float, typer.Option(min=0.0, max=0.5, help="Consensus: a sample is confident background at <= this.")] = LOW,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset (onnx format).")] = 20,
    name: Annotated[Optional[str], typer.Option(help="bioimageio: model name.")] = None,
    description: Annotated[Optional[str], typer.Option(help="bioimageio: one-line description.")] = None,
    authors: Annotated[Optional[list[str]], typer.Option("--authors", help='bioimageio: "Name;Affiliation" (repeatable).')] = None,
    license: Annotated[str, typer.Option("--license", help="bioimageio: SPDX license id.")] = "MIT",
    test_image: Annotated[Optional[Path], typer.Option(help="bioimageio: 2D test image with foreground.")] = None,
    seed: Annotated[int, typer.Option(help="bioimageio: seed of the baked-in latent draws.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and the summary.")] = False,
) -> None:
    """Export CHECKPOINT (default: the newest run's best.pt) to ONNX or bioimage.io."""
    require_extra("zoo" if format is Format("bioimageio") else "train", f"probda export --format {format.value}")
    setup_logging(quiet)
    note = ""
    if checkpoint is None:
        checkpoint = newest_checkpoint()
        note = " (newest run's best.pt)"
    if format is Format("bioimageio"):
        _export_bioimageio(checkpoint, output, name=name, description=description, authors=authors, license=license,
                           test_image=test_image, samples=samples, seed=seed,
                           consensus=consensus_spec(consensus_rule.value, threshold_high, threshold_low))
        return
    from ..exporters.onnx import export_onnx

    target = output or _default_folder(checkpoint)
    if not quiet:
        err.print(f"[dim]exporting {checkpoint}{note} to ONNX (opset {opset}); this takes a few seconds per graph...[/]")
    folder = export_onnx(checkpoint, target, samples=samples, opset=opset, consensus_rule=consensus_rule.value,
                         thresholds=(threshold_high, threshold_low), overwrite=overwrite)
    _summary_onnx(folder, checkpoint, note)


def _default_folder(checkpoint: Path) -> Path:
    """runs/x/best.pt -> runs/x/best.probda; adapted.pt -> adapted.probda."""
    return checkpoint.with_suffix(".probda")


def _summary_onnx(folder: Path, checkpoint: Path, note: str) -> None:
    from ..runtime.manifest import load_manifest

    m = load_manifest(folder, verify=False)
    files = ", ".join(sorted(m["files"]))
    out.print(f"[bold green]exported[/] {checkpoint}{note} -> [bold]{folder}[/]")
    out.print(f"  kind {m['kind']}, opset {m['opset']}, graphs: {files}")
    if m["kind"] == "punet":
        c = m["consensus"]
        out.print(f"  latent dim {m['latent_dim']}, default K {m['default_samples']}, consensus {c['rule']} "
                  f"({c['threshold_high']}/{c['threshold_low']}), halo {m['default_halo']} px")
    out.print(f"  run it without torch: probda segment {folder} -i IMAGES -o OUT_DIR")


def _export_bioimageio(checkpoint: Path, output: Optional[Path], **options) -> None:
    from ..errors import ProbdaError

    try:
        from ..model_zoo.package import export_bioimageio
    except ImportError as e:
        raise ProbdaError(f"--format bioimageio: the model zoo packager is not available ({e}); reinstall probda with its dependencies") from None
    report = export_bioimageio(checkpoint, output, **options)
    formats = getattr(report, "formats", {}) or {}
    out.print(f"[bold green]packaged[/] {checkpoint} -> [bold]{getattr(report, 'path', output)}[/]")
    if formats:
        out.print("  bioimageio.core test_model: " + ", ".join(f"{k} {v}" for k, v in formats.items()))


def register(app: typer.Typer) -> None:
    app.command("export", help=HELP)(handle_errors(export))
