"""`probda info`: describe a checkpoint, a run folder or an export folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..method import FLOAT_MAPS
from .common import handle_errors, out, require_extra


def _kv_table(title: str, rows: dict) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in rows.items():
        table.add_row(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    return table


def _health_values(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


# validation history columns, in this order, with short headers (80 columns)
HISTORY = {"iteration": "it", "train_loss": "loss", "val_dice": "dice", "val_dice_hard": "dice@.5",
           "val_agreement": "agree", "val_foreground": "fg", "val_foreground_ratio": "fg ratio",
           "val_consensus": "consensus", "val_diversity": "diversity", "verdict": "verdict"}


def _history_table(lines: list[dict], last: int = 15) -> Table:
    table = Table(title=f"validation history (last {min(last, len(lines))} of {len(lines)})", title_justify="left")
    keys = [k for k in HISTORY if any(k in line for line in lines)]
    for k in keys:
        table.add_column(HISTORY[k], justify="left" if k == "verdict" else "right", no_wrap=True)
    for line in lines[-last:]:
        table.add_row(*[f"{line[k]:.3g}" if k == "val_diversity" and isinstance(line.get(k), float) else
                        f"{line[k]:.3f}" if isinstance(line.get(k), float) else str(line.get(k, "")) for k in keys])
    return table


def describe_checkpoint(path: Path) -> None:
    from ..models.checkpoint import ema_state, load_checkpoint

    ckpt = load_checkpoint(path)
    n_params = sum(v.numel() for v in ckpt["state_dict"].values())
    metrics = ckpt.get("metrics", {})
    diversity = "-" if "val_diversity" not in metrics else (
        f"{metrics['val_diversity']:.4f} (1 - mean pairwise dice of prior samples on validation patches; "
        f"~0 means the samples only differ by noise and consensus acts as a confidence threshold)")
    out.print(_kv_table(f"checkpoint {path}", {
        "model": f"{ckpt['model_class']} ({n_params / 1e6:.2f} M parameters)",
        "config": ckpt["model_config"],
        "strategy": ckpt.get("strategy", "-"),
        "iteration": str(ckpt.get("iteration")),
        "best metric": str(ckpt.get("best_metric", "-")),
        "metrics": metrics,
        "sample diversity": diversity,
        "deploys": "EMA model weights" if ema_state(ckpt) is not None else "model weights",
        "normalization": ckpt.get("normalization", {}),
        "train config": ckpt.get("train_config", {}),
        "adapt config": ckpt.get("adapt_config", "-"),
        "provenance": ckpt.get("provenance", {}),
    }))


def _tiling(m: dict) -> str:
    tiling, rf = m.get("tiling") or {}, m.get("receptive_field") or {}
    mode = tiling.get("mode", "exact") + (f" ({tiling['reason']})" if tiling.get("reason") else "")
    radii = ", ".join(f"{k.removesuffix('_radius')} {v} px" for k, v in rf.items())
    return f"{mode}; halo {m.get('default_halo', '-')} px" + (f"; receptive field radius: {radii}" if radii else "")


def describe_export(folder: Path) -> None:
    """The export's essentials; every file was checked against its sha256 (the full manifest: manifest.json)."""
    from ..runtime.manifest import load_manifest

    m = load_manifest(folder, verify=True)
    model, prov, c = m.get("model", {}), m.get("provenance", {}), m.get("consensus", {})
    metrics = {k: v for k, v in prov.get("metrics", {}).items() if k.startswith("val_") and isinstance(v, float)}
    graphs = {name: f"{g['file']}: {', '.join(g['inputs'])} -> {', '.join(g['outputs'])}" for name, g in m["graphs"].items()}
    out.print(_kv_table(f"export {folder}", {
        "model": f"{m['kind']} ({model.get('class', '-')}), latent dim {m.get('latent_dim', '-')}",
        "model config": model.get("config", {}),
        "samples (default K)": str(m.get("default_samples", 1)),
        "maps": ", ".join(m.get("maps", FLOAT_MAPS)),
        "consensus": f"{c.get('rule', '-')} ({c.get('threshold_high', '-')}/{c.get('threshold_low', '-')})" if c else "-",
        "normalization": m.get("normalization", {}),
        "tiling": _tiling(m),
        "graphs": "\n".join(f"{name}  {text}" for name, text in graphs.items()),
        "files": f"{len(m.get('files', {}))} files, sha256 verified",
        "exported": f"{prov.get('exported_at', '-')} by {m.get('exporter', '-')}, opset {m.get('opset', '-')}",
        "checkpoint": f"{prov.get('checkpoint', '-')} (iteration {prov.get('iteration', '-')}, sha256 "
                      f"{str(prov.get('checkpoint_sha256', '-'))[:16]}...)",
        "validation metrics": {k: round(v, 4) for k, v in metrics.items()} or "-",
        "manifest": str(folder / "manifest.json"),
    }))


def info(
    path: Annotated[Path, typer.Argument(help="A checkpoint (.pt), a run folder, or an export folder (NAME.probda).")],
    plot: Annotated[bool, typer.Option("--plot", help="Run folders: render loss and validation curves to RUN_DIR/training_curves.png.")] = False,
) -> None:
    """Show model, configuration, metrics and provenance."""
    from ..errors import ProbdaError

    if plot:
        require_extra("report", "probda info --plot")
    if path.suffix == ".pt" or (path.is_dir() and not (path / "manifest.json").exists()):
        require_extra("train", f"probda info on a checkpoint or run folder ({path.name}); an export folder needs no more")
    if plot:
        if not path.is_dir():
            raise ProbdaError(f"{path}: not a run folder; --plot needs a folder with metrics.jsonl")
        from ..report.curves import plot_training_curves

        out.print(f"training curves: {plot_training_curves(path)}")
        if not any((path / name).exists() for name in ("best.pt", "latest.pt", "manifest.json")):
            return None

    if path.is_dir() and (path / "manifest.json").exists():
        return describe_export(path)
    if path.is_dir():
        ckpts = [p for p in (path / "best.pt", path / "latest.pt") if p.exists()]
        if not ckpts:
            raise ProbdaError(f"{path}: no best.pt/latest.pt or manifest.json here")
        describe_checkpoint(ckpts[0])
        health = path / "health.json"
        if health.exists():
            h = json.loads(health.read_text())
            agreement = h.get("teacher_student_agreement")
            out.print(_kv_table("adaptation health (label-free)", {
                "verdict": f"{h['verdict']}: {h['sentence']}", "source model": _health_values(h["source"]),
                "adapted": _health_values(h["adapted"]),
                "teacher-student agreement": "-" if agreement is None else f"{agreement:.3f}"}))
        metrics = path / "metrics.jsonl"
        if metrics.exists():
            out.print(_history_table([json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]))
        return None
    return describe_checkpoint(path)


def register(app: typer.Typer) -> None:
    app.command("info")(handle_errors(info))
