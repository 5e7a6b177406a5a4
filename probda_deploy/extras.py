"""Which optional parts of probda this install has: the pip extras and the modules each one brings.

The base install deploys (segment, info on exports, instances, OME-Zarr). A command that needs more checks
here first, so that it fails before doing anything, naming the extra to install (`cli.common.require_extra`).
"""

from __future__ import annotations

import importlib.util

EXTRAS = {
    "train": ("torch", "onnx", "onnxscript"),  # training, adaptation, import, export to ONNX, checkpoints as models
    "zoo": ("torch", "onnx", "bioimageio.core", "matplotlib"),  # bioimage.io packages: building and testing them
    "dask": ("distributed",),  # --workers / --scheduler
    "report": ("matplotlib",),  # HTML reports and training curves
}


def missing(extra: str) -> list[str]:
    """The modules of `extra` (a key of EXTRAS) that cannot be imported here."""
    gone = []
    for name in EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(name) is not None
        except ImportError:  # the parent package of a dotted name is missing, or an import hook refuses it
            found = False
        if not found:
            gone.append(name)
    return gone
