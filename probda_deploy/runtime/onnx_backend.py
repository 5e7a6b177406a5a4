"""The onnxruntime backend: an export folder's graphs behind the engine's per-window operations.

`encode(window)` and `decode(features, z)` are its steps: UNet features, then K cheap decoder passes
(first fcomb conv split algebraically, reductions fused) over row chunks, so K x H x W never sits in
memory. Processes share one backend per export folder (`open_backend`; `BackendRef` is what Dask tasks
carry). Importing this module imports neither torch nor scipy nor the writers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import RuntimeModelError
from ..method import FLOAT_MAPS, reduce_samples
from .backend import Backend
from .manifest import load_manifest
from .session import create_session
from .tiling import Tile

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20  # decoder working set per call (K x C x rows x W float32); larger ran slower (docs/experiments.md)


class OnnxBackend(Backend):
    """Loads an export folder once: the graphs behind the per-window operations.

    Args:
        folder: `NAME.probda/` written by `export_onnx`.
        device: auto, cpu or cuda.
        threads: intra-op threads (None: physical cores).
        verify: check sha256 of every file against the manifest.

    Raises:
        RuntimeModelError: invalid, tampered or newer export.
    """

    def __init__(self, folder: str | Path, *, device: str = "auto", threads: int | None = None, verify: bool = True):
        self.folder = Path(folder)
        self.device, self.threads = getattr(device, "value", device), threads
        manifest = load_manifest(self.folder, verify=verify)
        self._sessions, reports = {}, []
        for name, graph in manifest["graphs"].items():
            session, report = create_session(self.folder / graph["file"], device=device, threads=threads,
                                             blocked_layout=name != "decoder")
            self._sessions[name] = session
            reports.append(report)
        super().__init__(manifest, reports[0])

    @property
    def model_id(self) -> str:
        """First 16 hex digits of the manifest's sha256 (identifies the export in outputs)."""
        return hashlib.sha256((self.folder / "manifest.json").read_bytes()).hexdigest()[:16]

    def ref(self, threads: int | None = None) -> "BackendRef":
        """A picklable reference to this export that other processes open once; registers this backend for it here."""
        ref = BackendRef(str(self.folder), self.device, self.threads if threads is None else threads)
        if ref.threads == self.threads:
            _register(ref, self)
        return ref

    def prior_sum(self, window: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        return self.owned_sum(self._sessions["prior"].run(["prior_features"], {"image": window})[0], tile)

    def latents_from_sums(self, sums: np.ndarray, count: int, eps: np.ndarray) -> np.ndarray:
        pooled = (sums / max(count, 1)).astype(np.float32)
        mu, log_sigma = self._sessions["prior_head"].run(["mu", "log_sigma"], {"pooled": pooled})
        return (mu[None] + np.exp(log_sigma)[None] * eps[:, None, :]).astype(np.float32)

    def encode(self, window: np.ndarray) -> np.ndarray:
        """UNet features of a window: (1, C, h, w) float32."""
        return self._sessions["encoder"].run(["features"], {"image": window})[0]

    def decode(self, features: np.ndarray, z: np.ndarray, *, samples: bool = False) -> dict[str, np.ndarray]:
        """Decoder over row chunks of (1, C, h, w) features with latents z (K, 1, L).

        Returns:
            {"prob", "consensus", "std"} (+ "boundary" for boundary models): (h, w) float32
            (+ "samples" (K, h, w) when asked).
        """
        _, c, h, w = features.shape
        names = list(self.maps) + (["probs"] if samples else [])
        out = {n: np.empty((h, w), np.float32) for n in self.maps}
        if samples:
            out["samples"] = np.empty((z.shape[0], h, w), np.float32)
        rows = max(1, CHUNK_BYTES // max(1, 4 * z.shape[0] * c * w))
        for r in range(0, h, rows):
            chunk = np.ascontiguousarray(features[:, :, r : r + rows])
            res = self._sessions["decoder"].run(names, {"features": chunk, "z": z})
            for name, arr in zip(self.maps, res):
                out[name][r : r + chunk.shape[2]] = arr[0, 0]
            if samples:
                out["samples"][:, r : r + chunk.shape[2]] = res[-1][:, 0, 0]
        return out

    def predict_tile(self, window: np.ndarray, tile: Tile, z: np.ndarray | None, shape: tuple[int, int], *,
                     samples: bool = False) -> dict[str, np.ndarray]:
        """Encoder on the window and decoder on the core (PUNets), or the UNet graph."""
        core = (slice(None), slice(None), *tile.clipped_core(shape))
        if self.kind == "unet":
            extra = [n for n in self.maps if n not in FLOAT_MAPS]
            prob, *more = (a[core] for a in self._sessions["model"].run(["prob", *extra], {"image": window}))
            c = self.consensus_cfg
            maps = reduce_samples(prob[:, 0], rule=c["rule"], high=c["threshold_high"], low=c["threshold_low"])
            maps.update({n: a[0, 0] for n, a in zip(extra, more)})
            return {k: v.astype(np.float32, copy=False) for k, v in maps.items()}
        return self.decode(self.encode(window)[core], np.asarray(z, dtype=np.float32), samples=samples)


@dataclass(frozen=True)
class BackendRef:
    """How a process finds (or builds once) its backend: export folder, device, intra-op threads."""

    folder: str
    device: str = "auto"
    threads: int | None = None

    def open(self) -> OnnxBackend:
        """The process-wide OnnxBackend for this reference (created once per process)."""
        return open_backend(self.folder, device=self.device, threads=self.threads)


# The process's one model cache: export folder (+ manifest mtime, so a re-export is reloaded), device, threads.
_BACKENDS: dict[tuple, OnnxBackend] = {}
_LOCK = threading.Lock()


def _key(folder: str | Path, device: str, threads: int | None) -> tuple:
    folder = Path(folder).resolve()
    try:
        mtime = (folder / "manifest.json").stat().st_mtime_ns
    except OSError:  # OnnxBackend says what is wrong with the folder
        mtime = None
    return str(folder), mtime, getattr(device, "value", device), threads


def open_backend(folder: str | Path, *, device: str = "auto", threads: int | None = None) -> OnnxBackend:
    """The process-wide OnnxBackend of an export folder, loaded (and verified) on first use."""
    key = _key(folder, device, threads)
    with _LOCK:
        if key not in _BACKENDS:
            _store(key, OnnxBackend(folder, device=device, threads=threads))
        return _BACKENDS[key]


def _register(ref: BackendRef, backend: OnnxBackend) -> None:
    with _LOCK:
        _store(_key(ref.folder, ref.device, ref.threads), backend)


def _store(key: tuple, backend: OnnxBackend) -> None:
    """Cache `backend` under `key` and drop an earlier export of the same folder (frees its sessions). Hold _LOCK."""
    for old in [k for k in _BACKENDS if k[0] == key[0] and k[1] != key[1]]:
        del _BACKENDS[old]
    _BACKENDS[key] = backend


def clear_backends(folder: str | Path | None = None) -> None:
    """Drop cached backends (all, or those of one export folder) and with them their sessions' memory."""
    prefix = None if folder is None else str(Path(folder).resolve())
    with _LOCK:
        for key in [k for k in _BACKENDS if prefix is None or k[0] == prefix]:
            del _BACKENDS[key]


def load_export(folder: str | Path, *, device: str = "auto", threads: int | None = None) -> OnnxBackend:
    """A new, verified OnnxBackend, with a clear error for paths that are not export folders."""
    folder = Path(folder)
    if folder.suffix == ".pt":
        raise RuntimeModelError(f"{folder}: a checkpoint, not an export; export it with `probda export {folder} --format onnx`")
    return OnnxBackend(folder, device=device, threads=threads)
