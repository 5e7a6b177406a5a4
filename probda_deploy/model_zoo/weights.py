"""Weights of the zoo graph: ONNX (dynamic batch/height/width) and TorchScript.

Both formats are written from the same `ZooGraph` and checked against it on
the example input before they go into a package.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import ExportError
from .graph import ZooGraph

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("out_prob", "out_consensus", "out_std")
# float32 round-off of two runtimes evaluating the same graph; thresholded
# consensus may flip at single pixels, so it is compared by mismatch count.
_CHECK_ATOL = 1e-4


def export_onnx(graph: ZooGraph, example: torch.Tensor, path: Path, *, dynamo: bool = False) -> int:
    """Write `graph` as one ONNX file with dynamic batch, height and width.

    Args:
        example: (B, C, H, W) float32, H and W multiples of `graph.size_multiple`.
        dynamo: use the torch.export-based exporter (opset 20, ~30x slower here)
            instead of the TorchScript-based one (opset 17).

    Returns:
        The opset version written.

    Raises:
        ExportError: the exporter failed.
    """
    path = Path(path)
    dyn = {0: "batch", 2: "y", 3: "x"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                auto = torch.export.Dim.AUTO
                torch.onnx.export(
                    graph, (example,), str(path), dynamo=True, opset_version=20, input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: auto, 2: auto, 3: auto},), external_data=False,
                )
                opset = 20
            else:
                torch.onnx.export(
                    graph, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=[INPUT_NAME],
                    output_names=list(OUTPUT_NAMES), dynamic_axes={n: dyn for n in (INPUT_NAME, *OUTPUT_NAMES)},
                )
                opset = ONNX_OPSET
    except Exception as e:  # exporters raise many types
        raise ExportError(f"{path}: ONNX export failed ({type(e).__name__}: {str(e)[:200]})") from None
    return opset


def export_torchscript(graph: ZooGraph, example: torch.Tensor, path: Path) -> None:
    """Trace `graph` on `example` and save it (shapes stay dynamic: sizes are traced ops).

    Raises:
        ExportError: tracing or saving failed.
    """
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            traced.save(str(path))
    except Exception as e:
        raise ExportError(f"{path}: TorchScript export failed ({type(e).__name__}: {str(e)[:200]})") from None


def check_exported(graph: ZooGraph, onnx_path: Path, ts_path: Path, inputs: list[torch.Tensor]) -> dict[str, float]:
    """Run both weight files on `inputs` and compare mean probability and std with the torch graph.

    Returns:
        Max absolute difference per format.

    Raises:
        ExportError: a format disagrees with the torch graph by more than 1e-4.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ts = torch.jit.load(str(ts_path), map_location="cpu").eval()
    worst = {"onnx": 0.0, "torchscript": 0.0}
    with torch.no_grad():
        for x in inputs:
            ref = [t.numpy() for t in graph(x)]
            got = {"onnx": sess.run(None, {INPUT_NAME: x.numpy()}), "torchscript": [t.numpy() for t in ts(x)]}
            for fmt, outs in got.items():
                for i in (0, 2):  # prob, std: continuous outputs
                    worst[fmt] = max(worst[fmt], float(np.abs(outs[i] - ref[i]).max()))
    for fmt, diff in worst.items():
        if diff > _CHECK_ATOL:
            path = onnx_path if fmt == "onnx" else ts_path
            raise ExportError(f"{path}: {fmt} output differs from the torch model by {diff:.2e} (> {_CHECK_ATOL}); report this as a bug")
    log.info("exported weights agree with torch: %s", {k: f"{v:.1e}" for k, v in worst.items()})
    return worst
