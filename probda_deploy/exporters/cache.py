"""On-the-fly exports of checkpoints, cached by the checkpoint's sha256.

`probda segment run/best.pt ...` exports once to a cache folder and reuses it
while the checkpoint's bytes are unchanged: `.probda-cache/` next to the
checkpoint, or `~/.cache/probda/` when that folder is not writable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import RuntimeModelError
from ..runtime.manifest import load_manifest, sha256_file
from .onnx import export_onnx

log = logging.getLogger(__name__)


def cache_root_for(checkpoint: Path) -> Path:
    """`.probda-cache/` beside the checkpoint if writable, else `~/.cache/probda/`."""
    local = checkpoint.resolve().parent
    if os.access(local, os.W_OK):
        return local / ".probda-cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "probda"


def cached_export(checkpoint: str | Path, *, cache_root: str | Path | None = None, samples: int = 16) -> tuple[Path, bool]:
    """Export folder for a checkpoint, exported now or reused from the cache.

    Args:
        checkpoint: probda checkpoint (.pt).
        cache_root: where cached exports live (default: see cache_root_for).
        samples: default K of a new export.

    Returns:
        (export folder, reused): reused is True when a valid cached export existed.

    Raises:
        CheckpointError, ExportError: as export_onnx.
    """
    checkpoint = Path(checkpoint)
    digest = sha256_file(checkpoint) if checkpoint.is_file() else None
    if digest is None:
        from ..errors import CheckpointError

        raise CheckpointError(f"{checkpoint}: no such checkpoint file")
    root = Path(cache_root) if cache_root is not None else cache_root_for(checkpoint)
    folder = root / f"{checkpoint.stem}-{digest[:16]}.probda"
    if folder.is_dir():
        try:
            manifest = load_manifest(folder, verify=True)
            if manifest.get("provenance", {}).get("checkpoint_sha256") == digest:
                return folder, True
        except RuntimeModelError as e:
            log.warning("%s: cached export is invalid (%s); exporting again", folder, e)
    export_onnx(checkpoint, folder, samples=samples, overwrite=True)
    return folder, False


def export_for_runtime(checkpoint: str | Path) -> tuple[Path, str]:
    """The export folder that runs a checkpoint (exported on the fly, cached), and a sentence saying which.

    Raises:
        RuntimeModelError: no such checkpoint file.
        CheckpointError, ExportError: as export_onnx.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RuntimeModelError(f"{checkpoint}: no such checkpoint file")
    folder, reused = cached_export(checkpoint)
    how = "reused cached export" if reused else "exported on the fly to cache"
    return folder, f"checkpoint {checkpoint}: {how} {folder}"
