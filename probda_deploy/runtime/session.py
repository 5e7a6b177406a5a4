"""onnxruntime sessions: providers from `--device`, and the CPU settings that matter.

- Graph optimisation ALL (its blocked NCHWc convolutions are the fast ones), except for the
  decoder (EXTENDED, `blocked_layout=False`): there the blocked layout would reorder the K-sample
  stack around each 1x1 conv, which runs as a plain GEMM on NCHW.
- Intra-op threads = physical cores, not spinning after a run: a backend alternates between its
  sessions, each with its own pool, and an idle pool's spinning threads hold the cores the next needs.
- Memory patterns off: onnxruntime would keep one planned block per input shape (tiles come in
  several shapes), raising peak memory for no speed.
Measurements: docs/experiments.md. After a session is created, the providers that are really active are read back
with `session.get_providers()`: a CUDA provider that was requested but did not
load is reported, never hidden. Sessions live as long as their backend; the
process-wide cache is the backend cache (`onnx_backend.open_backend`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from ..errors import RuntimeModelError
from ..method import DEVICES, check_choice
from .backend import ProviderReport

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_CUDA_FAILED = False  # set once CUDA failed to activate in this process


def requested_providers(device: str) -> list[str]:
    """Providers to ask onnxruntime for.

    Raises:
        ConfigError: unknown device name.
    """
    device = getattr(device, "value", device)
    check_choice("--device", device, DEVICES)
    available = ort.get_available_providers()
    if device == "cpu":
        return [CPU]
    if device == "cuda" or (CUDA in available and not _CUDA_FAILED):
        return [CUDA, CPU]
    return [CPU]


def create_session(path: str | Path, *, device: str = "auto", threads: int | None = None,
                   blocked_layout: bool = True) -> tuple[ort.InferenceSession, ProviderReport]:
    """A new InferenceSession for `path` and what it really runs on.

    Args:
        path: .onnx file.
        device: auto (CUDA if it loads, else CPU), cpu or cuda.
        threads: intra-op threads; None = onnxruntime's default (physical cores).
        blocked_layout: ORT_ENABLE_ALL (with the NCHWc layout transformer); False: ORT_ENABLE_EXTENDED.

    Returns:
        The session and a ProviderReport of the active providers.

    Raises:
        RuntimeModelError: onnxruntime cannot load the graph.
    """
    global _CUDA_FAILED
    device = getattr(device, "value", device)
    providers = requested_providers(device)
    session = _new_session(path, providers, threads, blocked_layout)
    active = tuple(session.get_providers())
    note = ""
    if CUDA in providers and CUDA not in active:
        _CUDA_FAILED = True
        if device == "cuda":
            note = (
                "CUDA was requested but onnxruntime could not activate CUDAExecutionProvider "
                "(CUDA/cuDNN libraries missing or no GPU); running on CPUExecutionProvider"
            )
            log.warning(note)
        else:
            log.info("CUDAExecutionProvider is installed but did not load; using CPUExecutionProvider")
    return session, ProviderReport(device=device, active=active, note=note)


def _new_session(path: str | Path, providers: list[str], threads: int | None, blocked_layout: bool) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_ALL if blocked_layout else level.ORT_ENABLE_EXTENDED
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = False
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    # onnxruntime logs CUDA load failures through its default logger; we report them ourselves.
    previous = 2
    if CUDA in providers:
        ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for bad graphs
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise RuntimeModelError(f"{path}: onnxruntime cannot load this graph ({first}); re-export the model") from None
    finally:
        if CUDA in providers:
            ort.set_default_logger_severity(previous)
