"""The runtime sampler: an exported PUNet's graphs behind a small public per-window API.

Per window (one tile of the exact tiling, or the whole image):
- `window_input(image, tile, ...)`: the standardised network input (1, 1, h, w);
- `prior_sum(window, tile)`: the prior trunk summed over the cells the tile owns;
- `latents_from_sums(sums, count, eps)`: the prior head once per image, z = mu + sigma * eps;
- `encode(window)` and `decode(features, z)`: UNet features, then K cheap decoder
  passes (first fcomb conv split algebraically, reductions fused) over row chunks,
  so K x H x W never sits in memory; `predict_tile` chains them for one tile core.
The per-image loop over tiles lives in `predict.py` (one engine for in-memory and
on-disk outputs); `OnnxSampler.predict` is its in-memory form.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, RuntimeModelError
from .consensus import reduce_samples
from .manifest import load_manifest
from .predict import predict_image
from .sinks import MemorySink
from .session import ProviderReport, create_session
from .tiling import Tile, plan_tiles, read_window, round_up, with_halo

log = logging.getLogger(__name__)

NORMALIZE = ("image", "tile", "none")
AUTO_TILE_LIMIT = 1536  # images with a side above this are tiled by default
AUTO_TILE = 1024
CHUNK_BYTES = 16 << 20  # decoder working set per call (K x C x rows x W float32); 64 MB ran ~10% slower (RESULTS)
MAPS = ("prob", "consensus", "std")


def latent_eps(seed: int, name: str, k: int, latent_dim: int, slice_index: int = 0) -> np.ndarray:
    """Standard normal draws for one image, independent of batch order or splitting.

    Derived from sha256(f"{seed}:{basename of name}:{slice_index}") (slice_index: z of stacks), so every
    process and every block of the image draws the same latents. The first k rows do not depend on k
    (more samples extend, never reshuffle, the draws). Returns (k, latent_dim) float32.
    """
    key = f"{int(seed)}:{Path(str(name)).name}:{int(slice_index)}".encode()
    digest = hashlib.sha256(key).digest()
    rng = np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest, dtype=np.uint32))))
    return rng.standard_normal((k, latent_dim)).astype(np.float32)


class Sampler:
    """What every backend shares: the spec of its model, tiling plans, window inputs and whole-image `predict`.

    A backend (OnnxSampler here; the torch backend in `probda_deploy.backends`) adds the
    per-window operations the engine calls: `prior_sum`, `latents_from_sums` and
    `predict_tile` (see OnnxSampler for their contracts).

    Args:
        spec: the manifest of an export (or the same keys for another backend): kind,
            size_multiple, latent_dim, default_samples, default_halo, consensus,
            normalization, prior_stride, min_size, tiling.
        provider_report: what runs the graphs.
    """

    def __init__(self, spec: dict, provider_report: ProviderReport):
        self.manifest = m = spec
        self.kind = m["kind"]
        self.multiple = int(m["size_multiple"])
        self.latent_dim = int(m.get("latent_dim", 0))
        self.default_samples = int(m.get("default_samples", 1))
        self.default_halo = int(m.get("default_halo", 2 * self.multiple))
        prior_radius = (m.get("receptive_field") or {}).get("prior_radius")
        # the prior pass only needs its trunk's context (52 px for punet-small against the UNet's 87)
        self.prior_halo = self.default_halo if prior_radius is None else round_up(int(prior_radius), self.multiple)
        self.maps = tuple(m.get("maps", MAPS))  # + "boundary" for models trained with --boundaries
        self.consensus_cfg = m["consensus"]
        self.normalization = m["normalization"]
        self.prior_stride = int(m.get("prior_stride") or self.multiple)
        self.min_size = int(m.get("min_size") or self.multiple)
        tiling = m.get("tiling") or {}
        if not tiling and m.get("model", {}).get("config", {}).get("align_corners"):
            tiling = {"mode": "approximate", "reason": "align_corners=True"}
        self.tiling_mode = str(tiling.get("mode", "exact"))
        self.tiling_reason = str(tiling.get("reason", ""))
        self.provider_report = provider_report

    @property
    def providers(self) -> list[str]:
        """Execution providers really active (read back from onnxruntime)."""
        return list(self.provider_report.active)

    def open(self) -> "Sampler":
        """This sampler (tasks call `.open()` on a sampler or a SamplerRef alike)."""
        return self

    # ------------------------------------------------------ whole images
    def predict(
        self,
        image: np.ndarray,
        *,
        k: int | None = None,
        eps: np.ndarray | None = None,
        seed: int = 0,
        tile: int | None | str = "auto",
        halo: int | None = None,
        normalize: str = "image",
        return_samples: bool = False,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Predict one 2D image in memory (the engine of `predict.predict_image` with a MemorySink).

        Args:
            image: (H, W) array-like (numpy, memmap, zarr), any real dtype.
            k: number of samples (default: the manifest's default K).
            eps: (K, L) standard normal draws; drawn from `seed` if None.
            seed: seed of the numpy generator when eps is None.
            tile: core tile size; "auto" tiles only images with a side above
                1536 px (tiles of 1024); None never tiles.
            halo: context per side (default: the receptive-field radius from the manifest).
            normalize: "image" (whole-image statistics), "tile" (per window) or "none".
            return_samples: also return the K sample maps (K, H, W) as "samples".
            on_tile: called as on_tile(done, total) after each tile of each pass.

        Returns:
            {"prob", "consensus", "std"}: (H, W) float32 (+ "samples").
        """
        if getattr(image, "ndim", 2) != 2:
            raise ConfigError(f"predict takes one 2D image, got shape {tuple(image.shape)}; loop over slices of stacks")
        self.check_normalize(normalize)
        eps = self.draw_eps(eps, k, seed) if self.kind == "punet" else None
        sink = MemorySink(image.shape, samples=len(eps) if return_samples and eps is not None else 0)
        predict_image(self, image, sink, eps=[eps], tile=tile, halo=halo, normalize=normalize, on_progress=on_tile)
        return sink.result()

    @property
    def tiling_note(self) -> str:
        """What tiling guarantees for this model, for summaries ("" when tiles are exact)."""
        if self.tiling_mode == "whole-image":
            return f"whole images only, never tiled ({self.tiling_reason})"
        if self.tiling_mode == "approximate":
            return f"whole images unless --tile is given; tiles only approximate them ({self.tiling_reason})"
        return ""

    def plan(self, shape: tuple[int, ...], *, tile: int | None | str = "auto", halo: int | None = None) -> list[Tile]:
        """Tiles for an (H, W) image under this model's tiling guarantee.

        Args:
            shape: (H, W).
            tile: core size, "auto" or None (whole image). "auto" tiles images with a
                side above 1536 px, and only for models whose tiles are exact.
            halo: context per side (default: from the manifest).

        Returns:
            Tiles (one, the whole image, for models that are not tileable).

        Raises:
            ConfigError: image below the model's minimum size, or an explicit
                tile size for a model that only runs on whole images.
        """
        h, w = (int(v) for v in shape[-2:])
        if min(-(-h // self.multiple), -(-w // self.multiple)) * self.multiple < self.min_size:
            raise ConfigError(
                f"image {h}x{w} is smaller than this model's minimum {self.min_size}x{self.min_size} "
                f"(its prior encoder's unpadded convolutions need that much context); use larger images"
            )
        if tile == "auto":  # only exactly tileable models are tiled unasked
            tile = AUTO_TILE if self.tiling_mode == "exact" and max(h, w) > AUTO_TILE_LIMIT else None
        tiles = plan_tiles((h, w), multiple=self.multiple, tile=tile, halo=self.default_halo if halo is None else halo)
        if len(tiles) > 1 and self.tiling_mode == "whole-image":
            raise ConfigError(f"--tile {tile}: this model runs on whole images only ({self.tiling_reason}); drop --tile or pass --tile 0")
        if len(tiles) > 1 and self.tiling_mode == "approximate":
            log.warning("%s: tiled results only approximate whole-image ones (%s)", self.folder, self.tiling_reason)
        return tiles

    def prior_tiles(self, tiles: list[Tile], shape: tuple[int, ...], *, halo: int | None = None) -> list[Tile]:
        """The prior pass's tiles: the cores of `tiles` with at most the prior trunk's halo (`halo` if smaller)."""
        halo = self.default_halo if halo is None else halo
        return with_halo(tiles, tuple(shape[-2:]), multiple=self.multiple, halo=min(halo, self.prior_halo))

    # -------------------------------------------------------- per window
    @staticmethod
    def check_normalize(normalize: str) -> None:
        """Raises ConfigError for a normalisation other than image, tile or none."""
        if normalize not in NORMALIZE:
            raise ConfigError(f"normalize={normalize!r}: choose one of {', '.join(NORMALIZE)}")

    def draw_eps(self, eps: np.ndarray | None, k: int | None, seed: int) -> np.ndarray:
        """(K, L) float32 draws: `eps` checked, or K draws of numpy's generator seeded with `seed`.

        Raises:
            ConfigError: K < 1 or eps of the wrong shape.
        """
        if eps is None:
            k = self.default_samples if k is None else int(k)
            if k < 1:
                raise ConfigError(f"--samples {k}: need at least 1 sample")
            return np.random.default_rng(seed).standard_normal((k, self.latent_dim)).astype(np.float32)
        eps = np.asarray(eps, dtype=np.float32)
        if eps.ndim != 2 or eps.shape[1] != self.latent_dim:
            raise ConfigError(f"eps shape {eps.shape}: expected (K, {self.latent_dim})")
        return eps

    def window_input(self, image, tile: Tile, *, normalize: str, stats: tuple[float, float] | None) -> np.ndarray:
        """The network input of one tile's window: (1, 1, h, w) float32.

        Args:
            image: (H, W) array-like with numpy slicing.
            tile: the tile.
            normalize: "image" (with `stats`, the whole image's mean and std), "tile" or "none".
            stats: (mean, std) for "image".
        """
        x = read_window(image, tile.window, multiple=self.multiple)
        if normalize != "none" and self.normalization.get("mode") not in (None, "none"):
            mean, std = stats if normalize == "image" else (float(np.mean(x, dtype=np.float64)), float(np.std(x, dtype=np.float64)))
            x = ((x - mean) / (std + float(self.normalization.get("eps", 1e-7)))).astype(np.float32)
        return x[None, None]


class OnnxSampler(Sampler):
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

    def ref(self, threads: int | None = None) -> "SamplerRef":
        """A picklable reference to this export that other processes open once; registers this sampler for it here."""
        ref = SamplerRef(str(self.folder), self.device, self.threads if threads is None else threads)
        if ref.threads == self.threads:
            _register(ref, self)
        return ref

    def prior_sum(self, window: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        """Prior trunk of one tile's window, summed over the cells its core owns.

        Trunk cell j of the whole (padded) image reads input pixels from
        prior_stride * j on; the tile whose core holds that pixel owns the cell.
        Window origins are multiples of the stride, so the window's cell j'
        is the image's cell j' + origin / stride; with a halo of at least the
        prior's receptive field the owned cells are computed exactly as in the
        whole image, for padded (probda) and unpadded (torch-em) convolutions.

        Args:
            window: (1, 1, h, w) float32 network input of `tile`.
            tile: its tile.

        Returns:
            (sums (1, Cp) float64, number of cells summed).
        """
        trunk = self._sessions["prior"].run(["prior_features"], {"image": window})[0]
        ys, xs = tile.core_in_window(self.prior_stride)
        part = trunk[:, :, ys, xs]
        return part.sum(axis=(2, 3), dtype=np.float64), int(part.shape[2] * part.shape[3])

    def latents_from_sums(self, sums: np.ndarray, count: int, eps: np.ndarray) -> np.ndarray:
        """Prior head on the mean trunk cell: z = mu + sigma * eps, (K, 1, L) float32 for eps (K, L)."""
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
        """Maps of one tile's core, clipped to the (H, W) image: encoder + decoder, or the UNet graph.

        Args:
            window: (1, 1, h, w) from `window_input`.
            tile: the tile.
            z: (K, 1, L) latents of the image (None for UNet exports).
            shape: (H, W) of the image.
            samples: also return the K sample maps (PUNet only).

        Returns:
            {"prob", "consensus", "std"} (+ "samples"): arrays of the clipped core.
        """
        h, w = shape
        y0, y1, x0, x1 = tile.core
        wy, wx = tile.window[0], tile.window[2]
        core = (slice(None), slice(None), slice(y0 - wy, min(y1, h) - wy), slice(x0 - wx, min(x1, w) - wx))
        if self.kind == "unet":
            extra = [n for n in self.maps if n not in MAPS]
            prob, *more = (a[core] for a in self._sessions["model"].run(["prob", *extra], {"image": window}))
            c = self.consensus_cfg
            maps = reduce_samples(prob[:, 0], rule=c["rule"], high=c["threshold_high"], low=c["threshold_low"])
            maps.update({n: a[0, 0] for n, a in zip(extra, more)})
            return {k: v.astype(np.float32, copy=False) for k, v in maps.items()}
        return self.decode(self.encode(window)[core], np.asarray(z, dtype=np.float32), samples=samples)


@dataclass(frozen=True)
class SamplerRef:
    """How a process finds (or builds once) its sampler: export folder, device, intra-op threads."""

    folder: str
    device: str = "auto"
    threads: int | None = None

    def open(self) -> OnnxSampler:
        """The process-wide OnnxSampler for this reference (created once per process)."""
        return open_sampler(self.folder, device=self.device, threads=self.threads)


# The process's one model cache: export folder (+ manifest mtime, so a re-export is reloaded), device, threads.
_SAMPLERS: dict[tuple, OnnxSampler] = {}
_LOCK = threading.Lock()


def _key(folder: str | Path, device: str, threads: int | None) -> tuple:
    folder = Path(folder).resolve()
    try:
        mtime = (folder / "manifest.json").stat().st_mtime_ns
    except OSError:  # OnnxSampler says what is wrong with the folder
        mtime = None
    return str(folder), mtime, getattr(device, "value", device), threads


def open_sampler(folder: str | Path, *, device: str = "auto", threads: int | None = None) -> OnnxSampler:
    """The process-wide OnnxSampler of an export folder, loaded (and verified) on first use."""
    key = _key(folder, device, threads)
    with _LOCK:
        if key not in _SAMPLERS:
            _store(key, OnnxSampler(folder, device=device, threads=threads))
        return _SAMPLERS[key]


def _register(ref: SamplerRef, sampler: OnnxSampler) -> None:
    with _LOCK:
        _store(_key(ref.folder, ref.device, ref.threads), sampler)


def _store(key: tuple, sampler: OnnxSampler) -> None:
    """Cache `sampler` under `key` and drop an earlier export of the same folder (frees its sessions). Hold _LOCK."""
    for old in [k for k in _SAMPLERS if k[0] == key[0] and k[1] != key[1]]:
        del _SAMPLERS[old]
    _SAMPLERS[key] = sampler


def clear_samplers(folder: str | Path | None = None) -> None:
    """Drop cached samplers (all, or those of one export folder) and with them their sessions' memory."""
    prefix = None if folder is None else str(Path(folder).resolve())
    with _LOCK:
        for key in [k for k in _SAMPLERS if prefix is None or k[0] == prefix]:
            del _SAMPLERS[key]


def load_sampler(folder: str | Path, *, device: str = "auto", threads: int | None = None) -> OnnxSampler:
    """A new, verified OnnxSampler, with a clear error for paths that are not export folders."""
    folder = Path(folder)
    if folder.suffix == ".pt":
        raise RuntimeModelError(f"{folder}: a checkpoint, not an export; export it with `probda export {folder} --format onnx`")
    return OnnxSampler(folder, device=device, threads=threads)
