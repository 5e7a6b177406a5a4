"""ONNX export of probda checkpoints: `NAME.probda/` with graphs and manifest.json.

The dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset 20, `dynamic_shapes` as a tuple
matching the positional arguments) keeps batch, height and width dynamic; the TorchScript-based
exporter is deprecated. Opset 20 is the newest the exporter's onnxscript functions cover fully
and onnxruntime >= 1.17 runs. Graphs are saved as single files
(`external_data=False`); example tensors are made under `torch.no_grad()`
(`inference_mode` tensors break the export). H and W must be multiples of
2**(depth-1) inside the graphs: the runtime pads (reflect) before calling them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ExportError, ProbdaError
from ..files import replace_dir
from ..method import (BOUNDARY_MAP, CLASS_THRESHOLD, DEFAULT_RULE, FLOAT_MAPS, HIGH, LOW, NORMALIZATION, check_samples,
                      consensus_spec)
from ..models.backend import output_classes, runtime_spec
from ..models.checkpoint import ema_state, load_checkpoint, model_from_checkpoint
from ..models.punet import PUNet
from ..models.registry import model_spec
from ..models.unet import UNet
from ..runtime.manifest import FORMAT, FORMAT_VERSION, sha256_file, write_manifest
from .graphs import DecoderGraph, EncoderGraph, PriorTrunkGraph, UNetGraph, write_prior_head

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20


def export_onnx(
    checkpoint_or_model: str | Path | nn.Module,
    out_dir: str | Path,
    *,
    samples: int = 16,
    opset: int = DEFAULT_OPSET,
    consensus_rule: str = DEFAULT_RULE,
    thresholds: tuple[float, float] = (HIGH, LOW),
    ema: bool | None = None,
    overwrite: bool = False,
    check: bool = True,
) -> Path:
    """Export a probda PUNet or UNet to an ONNX folder for the runtime backend.

    Args:
        checkpoint_or_model: probda checkpoint path or a PUNet/UNet module.
        out_dir: the folder to write, conventionally `NAME.probda`.
        samples: default K recorded in the manifest.
        opset: ONNX opset (20 recommended, see module docstring).
        consensus_rule: "agree" (probda) or "confident" (reference code).
        thresholds: (high, low) confidence thresholds of the consensus.
        ema: use the checkpoint's EMA weights (adapted runs); None = if present.
        overwrite: replace an existing folder.
        check: compare onnxruntime with torch on a small random image and
            fail if they differ by more than 1e-3.

    Returns:
        The export folder.

    Raises:
        ExportError: unsupported model, existing folder, export or check failure.
        CheckpointError: unreadable checkpoint.
    """
    out_dir = Path(out_dir)
    consensus = consensus_spec(consensus_rule, *thresholds)
    check_samples(samples)
    if out_dir.exists() and not overwrite:
        raise ExportError(f"{out_dir}: already exists; pass --overwrite or choose another -o")
    model, ckpt, source = _load(checkpoint_or_model, ema)
    _check_supported(model, source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        graphs = _write_graphs(model, tmp, opset=opset, consensus=consensus)
        manifest = _manifest(model, graphs, tmp, ckpt=ckpt, source=source, samples=samples, opset=opset, consensus=consensus)
        write_manifest(tmp, manifest)
        if check:
            check_export(tmp, model)
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s", source, out_dir)
    return out_dir


def _load(obj, ema) -> tuple[nn.Module, dict | None, str]:
    if isinstance(obj, nn.Module):
        return obj.eval(), None, f"<{type(obj).__name__} in memory>"
    path = Path(obj)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, ema=ema)
    ckpt = {**ckpt, "_path": str(path), "_sha256": sha256_file(path), "_ema": (ema_state(ckpt) is not None) if ema is None else ema}
    return model, ckpt, str(path)


def _check_supported(model: nn.Module, source: str) -> None:
    if not isinstance(model, (PUNet, UNet)):
        raise ExportError(f"{source}: cannot export {type(model).__name__}; only probda PUNet and UNet models")
    cfg = model.config
    classes = output_classes(model)
    if cfg.in_channels != 1 or classes not in (1, 2):
        raise ExportError(
            f"{source}: model has {cfg.in_channels} input channel(s) and {classes} class(es); "
            f"the ONNX runtime supports single-channel images with a foreground output (and a boundary output)"
        )


@contextlib.contextmanager
def _quiet_export():
    """Silence the exporter's progress prints, deprecation and torchvision warnings."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(module: nn.Module, args: tuple, dynamic: tuple, inputs: list[str], outputs: list[str], path: Path, opset: int) -> None:
    try:
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                module.eval(), args, str(path), dynamo=True, opset_version=opset, input_names=inputs,
                output_names=outputs, dynamic_shapes=dynamic, external_data=False, verbose=False,
            )
    except ProbdaError:
        raise
    except Exception as e:  # the exporter raises many types and wraps the real cause
        raise ExportError(
            f"{path.name}: ONNX export failed: {innermost_cause(e)}; try another --opset (17-20), and if it persists "
            f"report this message with the output of `probda info` on the checkpoint"
        ) from None


def innermost_cause(exc: BaseException, *, limit: int = 200) -> str:
    """`Type: first line` of the innermost exception of a chain (__cause__, else __context__), shortened.

    torch.onnx wraps the real error in a TorchExportError whose text is a
    generic guide; the innermost exception names what failed.
    """
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or exc.__context__
        if nxt is None:
            break
        exc = nxt
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def example_side(model: nn.Module) -> int:
    """Height of the example image the graphs are traced with (width: + size_multiple).

    Large enough for every graph (torch-em's prior encoder has unpadded convs and
    needs ~100 px at 4 levels: tracing below its minimum fails) and unequal
    height and width, so the exporter keeps them as separate dynamic axes.
    """
    s = model.config.size_multiple
    return max(4 * s, model.min_side() + s) if isinstance(model, PUNet) else 4 * s


def _write_graphs(model: nn.Module, folder: Path, *, opset: int, consensus: dict) -> dict:
    """Export each graph into `folder`; return the manifest's `graphs` entry."""
    cfg = model.config
    s = cfg.size_multiple
    bat, hgt, wid = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    side = example_side(model)
    with torch.no_grad():
        image = torch.randn(2, 1, side, side + s)
    img_axes = ({0: bat, 2: hgt, 3: wid},)
    image_shape = ["batch", 1, "height", "width"]
    boundary = [BOUNDARY_MAP] if output_classes(model) == 2 else []
    if isinstance(model, UNet):
        _export(UNetGraph(model), (image,), img_axes, ["image"], ["prob", *boundary], folder / "model.onnx", opset)
        return {"model": _graph("model.onnx", {"image": image_shape}, {n: image_shape for n in ["prob", *boundary]})}
    c, cp, L = cfg.initial_features, model.prior.conv_layer.in_channels, cfg.latent_dim
    _export(EncoderGraph(model), (image,), img_axes, ["image"], ["features"], folder / "encoder.onnx", opset)
    _export(PriorTrunkGraph(model), (image,), img_axes, ["image"], ["prior_features"], folder / "prior.onnx", opset)
    write_prior_head(model.prior.conv_layer, L, folder / "prior_head.onnx", opset=opset)
    with torch.no_grad():
        feats, z = torch.randn(2, c, 12, 10), torch.randn(3, 2, L)
    k = torch.export.Dim("samples")
    dec_axes = ({0: bat, 2: hgt, 3: wid}, {0: k, 1: bat})
    outs = [*FLOAT_MAPS, "probs", *boundary]
    _export(DecoderGraph(model, consensus), (feats, z), dec_axes, ["features", "z"], outs, folder / "decoder.onnx", opset)
    map_shape = ["batch", 1, "height", "width"]
    return {
        "encoder": _graph("encoder.onnx", {"image": image_shape}, {"features": ["batch", c, "height", "width"]}),
        "prior": _graph("prior.onnx", {"image": image_shape}, {"prior_features": ["batch", cp, "prior_height", "prior_width"]}),
        "prior_head": _graph("prior_head.onnx", {"pooled": ["batch", cp]}, {"mu": ["batch", L], "log_sigma": ["batch", L]}),
        "decoder": _graph(
            "decoder.onnx",
            {"features": ["batch", c, "height", "width"], "z": ["samples", "batch", L]},
            {**{n: map_shape for n in FLOAT_MAPS}, "probs": ["samples", *map_shape], **{n: map_shape for n in boundary}},
        ),
    }


def _graph(file: str, inputs: dict, outputs: dict) -> dict:
    def axes(shapes: dict) -> dict:
        return {n: {str(i): d for i, d in enumerate(shape) if isinstance(d, str)} for n, shape in shapes.items()}

    return {"file": file, "inputs": inputs, "outputs": outputs, "dynamic_axes": {**axes(inputs), **axes(outputs)}}


def _manifest(model, graphs, folder, *, ckpt, source, samples, opset, consensus) -> dict:
    cls_name, config = model_spec(model)
    spec = runtime_spec(model)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": spec["kind"],
        "opset": opset,
        "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}",
        "graphs": graphs,
        "files": {g["file"]: sha256_file(folder / g["file"]) for g in graphs.values()},
        "model": {"class": cls_name, "config": config},
        **{k: spec[k] for k in ("size_multiple", "prior_stride", "min_size", "tiling", "receptive_field", "default_halo",
                                "latent_dim")},
        "default_samples": samples if spec["kind"] == "punet" else 1,
        "threshold": CLASS_THRESHOLD,
        "maps": spec["maps"],
        "consensus": consensus,
        "std": "population standard deviation (ddof=0) of the K sample probabilities",
        "normalization": dict((ckpt or {}).get("normalization") or NORMALIZATION),
        "provenance": _provenance(ckpt, source),
    }


def _provenance(ckpt: dict | None, source: str) -> dict:
    import onnx

    prov = {
        "source": source,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "probda_version": __version__,
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
    }
    if ckpt is not None:
        prov.update(
            checkpoint=ckpt["_path"],
            checkpoint_sha256=ckpt["_sha256"],
            ema_weights=bool(ckpt["_ema"]),
            iteration=ckpt.get("iteration"),
            metrics=ckpt.get("metrics", {}),
            checkpoint_provenance=ckpt.get("provenance", {}),
        )
    return prov


def check_export(folder: Path, model: nn.Module, *, tol: float = 1e-3) -> None:
    """Compare onnxruntime against torch on one odd-sized random image (K=3).

    Raises:
        ExportError: maps differ by more than `tol`.
    """
    from ..runtime.onnx_backend import OnnxBackend

    _compare(OnnxBackend(folder, device="cpu", verify=False), model, folder, tol)  # its sessions go with it


def _compare(backend, model: nn.Module, folder: Path, tol: float) -> None:
    s = model.config.size_multiple
    side = model.min_side() if isinstance(model, PUNet) else s
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, max(3 * s, side + s) + 1, max(2 * s, side) + 3)).astype(np.float32)
    if isinstance(model, PUNet):
        eps = rng.standard_normal((3, 1, model.config.latent_dim)).astype(np.float32)
        maps = backend.predict(x[0], eps=eps[:, 0], tile=None, normalize="none")
        with torch.no_grad():
            ref = torch.sigmoid(model.sample_logits(torch.from_numpy(x)[:, None], eps=torch.from_numpy(eps))).mean(0)[0].numpy()
    else:
        maps = backend.predict(x[0], tile=None, normalize="none")
        with torch.no_grad():
            ref = torch.sigmoid(model(torch.from_numpy(x)[:, None]))[0].numpy()
    got = np.stack([maps[n] for n in ("prob", "boundary")[: ref.shape[0]]])
    err = float(np.abs(got - ref).max())
    if not err <= tol:
        raise ExportError(f"{folder}: onnxruntime differs from torch by {err:.2e} (> {tol:g}); report this with the model config")
