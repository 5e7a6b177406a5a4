"""`export_bioimageio`: a probda PUNet checkpoint -> a validated bioimage.io model zoo package."""

from __future__ import annotations

import getpass
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import ExportError, ImageReadError, ZooValidationError
from ..files import atomic_path
from ..method import consensus_spec
from .validate import ZooSummary, require_passed, validate_package

log = logging.getLogger(__name__)

MAX_TEST_SIZE = 256
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_+\- ()]")


@dataclass(frozen=True)
class ZooReport:
    """What `export_bioimageio` wrote and how bioimageio.core judged it.

    Attributes:
        path: the package .zip.
        summary: bioimageio.core test_model result (`summary.formats`: status per weights format).
    """

    path: Path
    name: str
    summary: ZooSummary
    samples: int
    seed: int
    test_image: str
    seconds: float

    @property
    def formats(self) -> dict[str, str]:
        return dict(self.summary.formats)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "status": self.summary.status, "formats": self.formats,
                "samples": self.samples, "seed": self.seed, "test_image": self.test_image,
                "seconds": round(self.seconds, 2), "summary": self.summary.to_dict()}


def parse_authors(authors: Sequence[Any] | str | None) -> tuple[tuple[str, str | None], ...]:
    """"Name;Affiliation" strings (or (name, affiliation) pairs) -> pairs; default: the current user."""
    if authors is None or authors == [] or authors == ():
        return ((getpass.getuser() or "probda user", None),)
    if isinstance(authors, str):
        authors = [authors]
    out = []
    for a in authors:
        name, _, aff = a.partition(";") if isinstance(a, str) else (a[0], None, a[1] if len(a) > 1 else None)
        name = str(name).strip()
        if not name or "/" in name:
            raise ExportError(f"--authors '{a}': need 'Name;Affiliation' with a non-empty name without '/'")
        out.append((name, (aff or "").strip() or None))
    return tuple(out)


def default_name(checkpoint: Path) -> str:
    """'probda PUNet <run folder>' reduced to the characters bioimage.io allows."""
    stem = checkpoint.parent.name if checkpoint.stem in ("best", "latest") else checkpoint.stem
    name = _NAME_CHARS.sub("-", f"probda PUNet {stem}").strip()
    return name[:64]


def _check_name(name: str) -> str:
    if len(name) < 5 or len(name) > 128 or _NAME_CHARS.search(name):
        raise ExportError(f"--name '{name}': 5-128 characters from letters, digits, space and _+-() only")
    return name


def _plain(value: Any, depth: int = 0) -> Any:
    """JSON/YAML-safe copy of checkpoint metadata (tensors -> lists or shape, paths -> str)."""
    if depth > 8:
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else str(value)
    if hasattr(value, "tolist") and hasattr(value, "shape"):
        n = int(value.numel()) if hasattr(value, "numel") else int(np.size(value))
        return _plain(value.tolist(), depth + 1) if n <= 64 else f"<array shape {tuple(value.shape)}>"
    return str(value)


def _probda_config(ckpt: dict, checkpoint: Path, model, *, ema: bool, samples: int, seed: int, eps: np.ndarray,
                   consensus: dict, geo, test_source: str, exporter: str) -> dict:
    from .. import __version__
    from ..runtime.manifest import sha256_file

    n_params = sum(int(p.numel()) for name, p in model.named_parameters() if not name.startswith("posterior."))
    skip = {"state_dict", "ema_state_dict", "teacher_state_dict", "optimizer", "scheduler", "scaler", "rng", "model_config", "format"}
    extra = {k: _plain(v) for k, v in ckpt.items() if k not in skip}
    return {
        "format": "probda-bioimageio", "format_version": 1, "probda_version": __version__,
        "model": {"class": ckpt.get("model_class"), "config": _plain(ckpt.get("model_config")),
                  "weights": "ema" if ema else "model", "parameter_count": n_params},
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint),
                       "iteration": _plain(ckpt.get("iteration")), "metrics": _plain(ckpt.get("metrics", {}))},
        "provenance": extra,
        "sampling": {"samples": samples, "seed": seed, "generator": "probda_deploy.method.latent_eps(seed, 'bioimageio', K, L)",
                     "shared_across_batch": True, "eps": [[float(v) for v in row] for row in eps]},
        "consensus": consensus,
        "normalization": _plain(ckpt.get("normalization", {})),
        "geometry": {"size_step": geo.step, "min_size": geo.min_size, "halo": geo.halo},
        "test_image": test_source, "onnx_exporter": exporter,
    }


def _center_crop(image: np.ndarray, geo, where: str) -> np.ndarray:
    h, w = image.shape
    side = lambda n: min(n, MAX_TEST_SIZE) // geo.step * geo.step  # noqa: E731
    th, tw = side(h), side(w)
    if th < geo.min_size or tw < geo.min_size:
        raise ExportError(f"{where}: test image {h}x{w} is smaller than the model's minimum {geo.min_size}x{geo.min_size}; "
                          "give a larger --test-image")
    y0, x0 = (h - th) // 2, (w - tw) // 2
    return image[y0:y0 + th, x0:x0 + tw]


def load_test_image(test_image: str | Path | None, geo, *, seed: int) -> tuple[np.ndarray, str]:
    """(H, W) float32 test image cropped to a valid size, and where it came from.

    None: a synthetic nuclei image (probda_deploy.data.synthetic) with foreground.
    """
    if test_image is None:
        from ..data.synthetic import make_nuclei

        size = max(128, -(-geo.min_size // geo.step) * geo.step)
        img, _ = make_nuclei(np.random.default_rng(seed), (size, size))
        return img.astype(np.float32), f"synthetic nuclei image {size}x{size} (probda_deploy.data.synthetic, seed {seed})"
    from ..data.io import read_image

    path = Path(test_image)
    try:
        image = read_image(path, allow_stack=False)
    except ImageReadError as e:
        raise ExportError(f"--test-image {e}") from None
    return _center_crop(image, geo, str(path)), path.name


def _check_outputs(outputs: dict[str, np.ndarray], where: str) -> None:
    for key, arr in outputs.items():
        if float(np.abs(arr).max()) < 1e-4:
            raise ExportError(f"{where}: the model's '{key}' output is ~0 everywhere on the test image, which bioimage.io "
                              "cannot use as a test; give a --test-image with foreground the model segments")
    if not (outputs["prob"] >= 0.5).any():
        log.warning("%s: no pixel has mean probability >= 0.5; the test image shows no foreground", where)


def export_bioimageio(checkpoint: str | Path, out: str | Path | None, *, name: str | None = None,
                      description: str | None = None, authors: Sequence[Any] | str | None = None, license: str = "MIT",
                      test_image: str | Path | None = None, samples: int = 16, seed: int = 0,
                      consensus: dict | None = None, ema: bool | None = None,
                      dynamo: bool = False) -> ZooReport:
    """Package a PUNet checkpoint for the bioimage.io model zoo and validate it offline.

    Args:
        checkpoint: probda checkpoint (.pt) of a PUNet (its EMA weights when present).
        out: the .zip to write, or a folder (then `<name>.zip` inside); None: `./<name>.zip`.
        name, description, authors ("Name;Affiliation" strings), license (SPDX id): metadata.
        test_image: 2D image with foreground; None: a synthetic nuclei image.
        samples: K fixed latent draws baked into the graph; seed: their seed.
        consensus: rule and thresholds of the consensus output (`method.consensus_spec`; default agree, 0.9/0.1).
        dynamo: export ONNX with the torch.export-based exporter (slower).

    Returns:
        ZooReport with the zip path and the test summary (status per weights format).

    Raises:
        CheckpointError, ExportError: bad input; ZooValidationError: bioimageio.core's test failed
        (no package is left behind).
    """
    t0 = time.perf_counter()
    from ..models.checkpoint import ema_state, load_checkpoint, model_from_checkpoint

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    use_ema = (ema_state(ckpt) is not None) if ema is None else ema
    model = model_from_checkpoint(ckpt, ema=use_ema)
    if ckpt.get("model_class") not in ("PUNet", "TorchEmPUNet"):
        raise ExportError(f"{checkpoint}: bioimage.io export needs a PUNet checkpoint, got {ckpt.get('model_class')}; "
                          "export UNets with --format onnx")
    name = _check_name(name or default_name(checkpoint))
    out = _resolve_out(out, name)
    with tempfile.TemporaryDirectory(prefix="probda-zoo-") as tmp:
        tmp_zip = _build_package(Path(tmp), ckpt, checkpoint, model, out, name=name, description=description,
                                 authors=parse_authors(authors), license=license, test_image=test_image, samples=samples,
                                 seed=seed, consensus=consensus or consensus_spec(), ema=use_ema, dynamo=dynamo)
        try:
            summary = require_passed(validate_package(tmp_zip))
        except ZooValidationError as e:
            tmp_zip.unlink(missing_ok=True)
            raise ZooValidationError(f"{out}: package failed bioimageio.core's test and was not written: {e}") from None
        with atomic_path(out, suffix=".zip") as tmp:
            shutil.move(tmp_zip, tmp)
    summary = ZooSummary(**{**summary.__dict__, "path": out})
    source = "synthetic" if test_image is None else str(test_image)
    return ZooReport(out, name, summary, samples, seed, source, time.perf_counter() - t0)


def _resolve_out(out: str | Path | None, name: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-").lower() or "probda-punet"
    if out is None:
        return Path(f"{slug}.zip").resolve()
    out = Path(out)
    if out.suffix.lower() != ".zip":
        out = out / f"{slug}.zip"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def _build_package(tmp: Path, ckpt: dict, checkpoint: Path, model, out: Path, *, name, description, authors, license,
                   test_image, samples, seed, consensus, ema, dynamo) -> Path:
    import torch

    from ..method import standardize
    from .cover import render_cover
    from .describe import OUTPUT_IDS, ZooFiles, ZooMeta, build_description, geometry_for, tolerances_for
    from .graph import ZooGraph
    from .readme import write_readme
    from .weights import check_exported, export_onnx, export_torchscript

    geo = geometry_for(model.config, min_side=model.min_side())
    graph = ZooGraph(model, samples=samples, seed=seed, consensus=consensus).eval()
    image, source = load_test_image(test_image, geo, seed=seed)
    norm_eps = float(ckpt.get("normalization", {}).get("eps", 1e-7))
    raw = np.repeat(image[None, None], geo.in_channels, axis=1).astype(np.float32)  # (1, C, H, W)
    x = torch.from_numpy(standardize(raw, eps=norm_eps))
    with torch.no_grad():
        outputs = {k: t.numpy().astype(np.float32) for k, t in zip(OUTPUT_IDS, graph(x))}
    _check_outputs(outputs, source)
    files = ZooFiles(readme=tmp / "README.md", cover=tmp / "cover.png", test_input=tmp / "test_input.npy",
                     test_outputs={k: tmp / f"test_output_{k}.npy" for k in OUTPUT_IDS},
                     sample_input=tmp / "sample_input.tif", onnx=tmp / "weights.onnx", torchscript=tmp / "weights_torchscript.pt")
    np.save(files.test_input, raw)
    for k in OUTPUT_IDS:
        np.save(files.test_outputs[k], outputs[k])
    import tifffile

    tifffile.imwrite(files.sample_input, image)
    opset = export_onnx(graph, x, files.onnx, dynamo=dynamo)
    export_torchscript(graph, x, files.torchscript)
    extra = torch.randn(2, geo.in_channels, geo.min_size + geo.step, geo.min_size, generator=torch.Generator().manual_seed(seed))
    check_exported(graph, files.onnx, files.torchscript, [x, extra])
    render_cover(image, outputs["prob"][0, 0], outputs["std"][0, 0], files.cover)
    tolerances = tolerances_for(outputs)
    meta = ZooMeta(name=name, description=description or _default_description(ckpt, ema), authors=authors, license=license)
    probda = _probda_config(ckpt, checkpoint, model, ema=ema, samples=samples, seed=seed, eps=graph.eps.numpy(),
                            consensus=consensus, geo=geo, test_source=source, exporter="dynamo" if dynamo else "torchscript")
    write_readme(files.readme, meta, geo, samples=samples, seed=seed, consensus=consensus, tolerances=tolerances,
                 provenance=probda, zip_name=out.name)
    try:
        descr = build_description(files, meta, geo, opset=opset, norm_eps=norm_eps, tolerances=tolerances,
                                  probda_config=probda, samples=samples)
    except ValueError as e:  # pydantic.ValidationError is a ValueError
        raise ExportError(f"{out}: invalid bioimage.io metadata: {_first_error(e)}; check --name/--license/--authors") from None
    from bioimageio.spec import save_bioimageio_package

    tmp_zip = out.with_name(f".{out.stem}.{os.getpid()}.tmp.zip")
    try:
        save_bioimageio_package(descr, output_path=tmp_zip)
    except Exception as e:
        tmp_zip.unlink(missing_ok=True)
        raise ExportError(f"{out}: writing the package failed ({type(e).__name__}: {str(e)[:200]})") from None
    return tmp_zip


def _default_description(ckpt: dict, ema: bool) -> str:
    what = "adapted " if ema else ""
    return (f"{what}Probabilistic U-Net for 2D foreground segmentation with uncertainty: mean probability, "
            "consensus and std of fixed latent samples. Packaged by probda.")


def _first_error(e: Exception) -> str:
    errs = getattr(e, "errors", None)
    if callable(errs):
        try:
            first = errs()[0]
            return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
        except Exception:  # pragma: no cover - defensive
            pass
    return str(e).splitlines()[0][:200]
