"""The `manifest.json` of an ONNX export folder (`NAME.probda/`): read, verify, write.

numpy/stdlib only. The manifest names every graph file with its sha256, so a
runtime refuses files that were modified after export, and carries everything
the backend needs (latent dim, default K, consensus rule and thresholds,
normalisation, size multiple, receptive field).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import RuntimeModelError
from ..files import sha256_file, write_text_atomic

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "load_manifest", "sha256_file", "write_manifest"]

FORMAT = "probda-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
KINDS = ("punet", "unet")

_REQUIRED = ("format", "format_version", "kind", "files", "graphs", "size_multiple", "normalization", "consensus")
_GRAPHS = {"punet": ("encoder", "prior", "prior_head", "decoder"), "unet": ("model",)}


def load_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read and check the manifest of an export folder.

    Args:
        folder: the `NAME.probda/` folder.
        verify: recompute the sha256 of every listed file and compare.

    Returns:
        The manifest dict (JSON types only).

    Raises:
        RuntimeModelError: not an export folder, unreadable or incomplete
            manifest, newer format version, missing or modified files.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise RuntimeModelError(f"{folder}: not an export folder (no such directory); give a NAME.probda folder from `probda export`")
    if not path.is_file():
        raise RuntimeModelError(f"{folder}: no {MANIFEST_NAME}; this is not a probda ONNX export (create one with `probda export --format onnx`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RuntimeModelError(f"{path}: unreadable manifest ({e}); re-export the model") from None
    _check_fields(manifest, path)
    if verify:
        verify_files(folder, manifest)
    return manifest


def _check_fields(manifest: Any, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RuntimeModelError(f"{path}: not a probda ONNX manifest (format != '{FORMAT}')")
    try:
        version = int(manifest.get("format_version", 0))
    except (TypeError, ValueError):
        version = 0
    if version > FORMAT_VERSION:
        raise RuntimeModelError(
            f"{path}: export format version {manifest['format_version']} is newer than this probda supports "
            f"({FORMAT_VERSION}); upgrade probda or re-export with this version"
        )
    if version < 1:
        raise RuntimeModelError(f"{path}: invalid format_version {manifest.get('format_version')!r}; re-export the model")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise RuntimeModelError(f"{path}: manifest lacks {', '.join(missing)}; re-export the model")
    kind = manifest["kind"]
    if kind not in KINDS:
        raise RuntimeModelError(f"{path}: unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    absent = [g for g in _GRAPHS[kind] if g not in manifest["graphs"]]
    if absent:
        raise RuntimeModelError(f"{path}: manifest names no {', '.join(absent)} graph; re-export the model")


def verify_files(folder: Path, manifest: dict) -> None:
    """Compare the sha256 of every file listed in `manifest["files"]`.

    Raises:
        RuntimeModelError: a listed file is missing or its hash differs.
    """
    for graph in manifest["graphs"].values():
        if graph["file"] not in manifest["files"]:
            raise RuntimeModelError(f"{folder / graph['file']}: not listed with a sha256 in the manifest; re-export the model")
    for name, expected in manifest["files"].items():
        file = folder / name
        if Path(name).name != name:
            raise RuntimeModelError(f"{folder}: manifest lists a file outside the folder ({name!r}); re-export the model")
        if not file.is_file():
            raise RuntimeModelError(f"{file}: missing from the export folder; copy the whole folder or re-export")
        if sha256_file(file) != expected:
            raise RuntimeModelError(
                f"{file}: sha256 does not match the manifest (file modified or corrupted after export); "
                f"re-export the model or copy the folder again"
            )


def write_manifest(folder: str | Path, manifest: dict) -> Path:
    """Write `manifest.json` atomically (sorted keys, 2-space indent)."""
    folder = Path(folder)
    return write_text_atomic(folder / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
