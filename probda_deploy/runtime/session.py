"""onnxruntime sessions: providers from `--device` and the settings measured to matter on CPU.

Settings (measured on CPU): graph optimisation ORT_ENABLE_ALL (1.5x over
EXTENDED for convolutions), sequential execution, CPU memory arena on, intra-op
threads = physical cores (onnxruntime's own default when `threads` is None).
The decoder graph is the exception (`blocked_layout=False`, ORT_ENABLE_EXTENDED):
ALL's blocked NCHWc layout reorders the (K*B, C, H, W) stack before and after
each of its 1x1 convs, around the per-sample bias add that has no blocked kernel;
plain 1x1 convs run as GEMMs on NCHW directly. Intra-op threads do not spin
after a run: a sampler alternates between its sessions (prior, encoder, decoder),
each with its own thread pool, and the idle pool's spinning threads took the
cores from the next one (docs/experiments.md, "Decoder layout and thread
spinning").
Memory patterns off: onnxruntime plans and keeps one block per input
shape, which nearly doubled peak RSS with tiles (punet-small, 1200 px windows,
K=16: 2.06 GB -> 1.17 GB) and was not faster (4.9 s -> 4.6 s per window).
After a session is created, the providers that are really active are read back
with `session.get_providers()`: a CUDA provider that was requested but did not
load is reported, never hidden. Sessions live as long as their sampler; the
process-wide cache is the sampler cache (`sampler.open_sampler`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ..errors import ConfigError, RuntimeModelError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

_CUDA_FAILED = False  # set once CUDA failed to activate in this process


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what runs.

    Attributes:
        device: the requested device (auto, cpu, cuda).
        active: providers onnxruntime really uses, in priority order.
        note: a plain sentence when the request could not be met, else "".
    """

    device: str
    active: tuple[str, ...]
    note: str = ""

    @property
    def provider(self) -> str:
        return self.active[0] if self.active else "none"


def requested_providers(device: str) -> list[str]:
    """Providers to ask onnxruntime for.

    Raises:
        ConfigError: unknown device name.
    """
    device = getattr(device, "value", device)
    if device not in DEVICES:
        raise ConfigError(f"--device {device}: unknown device; choose auto, cpu or cuda")
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
