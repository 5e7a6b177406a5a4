"""probda checkpoints: plain dicts of tensors and builtins, loadable with weights_only=True.

Layout (format "probda-checkpoint", version 1):
    format, format_version, model_class, model_config, state_dict,
    [ema_state_dict], [optimizer, scheduler, scaler, rng], iteration,
    metrics, best_metric, normalization, train_config, provenance.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_path
from ..method import NORMALIZATION
from ..errors import CheckpointError, ConfigError
from .registry import model_from_spec, model_spec

FORMAT = "probda-checkpoint"
FORMAT_VERSION = 1


EMA_KEY = "ema_state_dict"  # adapted runs: the EMA of the trained model, the weights they deploy
LEGACY_EMA_KEY = "teacher_state_dict"

def make_checkpoint(model: nn.Module, **extra: Any) -> dict:
    """Checkpoint dict for `model` plus extra top-level entries (iteration, metrics, ...)."""
    cls_name, cfg = model_spec(model)
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": cls_name,
        "model_config": cfg,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "iteration": 0,
        "metrics": {},
        "normalization": dict(NORMALIZATION),
        "provenance": {"probda_version": _version(), "torch_version": str(torch.__version__)},
    }
    ckpt.update(extra)
    return ckpt


def save_checkpoint(ckpt: dict, path: str | Path) -> Path:
    """Write atomically: temp file in the same folder, fsync, rename (files.atomic_path)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(ckpt, f)
        f.flush()
        os.fsync(f.fileno())
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict:
    """Load a probda checkpoint safely (weights_only=True).

    Raises:
        CheckpointError: missing file, unsafe pickle, not a probda checkpoint,
            or a newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "GLOBAL" not in text.upper() and not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or not a torch file)") from None
        what = re.search(r"GLOBAL:? ([\w.]+)", text)
        raise CheckpointError(
            f"{path}: refused to load: the file needs arbitrary Python objects unpickled"
            f"{' (' + what.group(1) + ')' if what else ''}, which could run code; probda only loads plain "
            f"weights. If it comes from the paper's code or torch-em, convert it with `probda import`"
        ) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/zip errors for corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = " (looks like a reference/torch-em checkpoint: run `probda import` first)" if isinstance(ckpt, dict) and "model_state" in ckpt else ""
        raise CheckpointError(f"{path}: not a probda checkpoint{hint}")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt['format_version']} is newer than this probda "
            f"supports ({FORMAT_VERSION}); upgrade probda"
        )
    return ckpt


def ema_state(ckpt: dict) -> dict | None:
    """The EMA weights of an adapted checkpoint (the ones it deploys), or None.

    Stored as `ema_state_dict`; checkpoints written before the key was renamed hold them as `teacher_state_dict`.
    """
    return ckpt.get(EMA_KEY, ckpt.get(LEGACY_EMA_KEY))


def model_from_checkpoint(ckpt: dict | str | Path, *, ema: bool | None = None, map_location: str = "cpu") -> nn.Module:
    """Rebuild the model of a checkpoint and load its weights (eval mode).

    Args:
        ema: load the EMA weights (`ema_state`); None: if the checkpoint has them (adapted runs deploy them).
    """
    source = ckpt if isinstance(ckpt, (str, Path)) else None
    if source is not None:
        ckpt = load_checkpoint(source, map_location=map_location)
    where = source or "checkpoint"
    try:
        model = model_from_spec(ckpt["model_class"], dict(ckpt["model_config"]))
    except (KeyError, ConfigError, TypeError) as e:
        raise CheckpointError(f"{where}: cannot rebuild the model ({e})") from None
    averaged = ema_state(ckpt)
    if ema and averaged is None:
        raise CheckpointError(f"{where}: has no EMA weights (not an adapted checkpoint)")
    state = averaged if (ema is None and averaged is not None) or ema else ckpt["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not fit the model config ({str(e)[:200]})") from None
    return model.eval()



def _version() -> str:
    from .. import __version__

    return __version__
