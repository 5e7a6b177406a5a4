"""Exporters: ONNX folders for the runtime backend (bioimage.io packages live in model_zoo/).

Importing this package imports torch; the runtime (probda_deploy.runtime) does not.
"""

from .cache import cached_export
from .onnx import DEFAULT_OPSET, check_export, export_onnx

__all__ = ["DEFAULT_OPSET", "cached_export", "check_export", "export_onnx"]
