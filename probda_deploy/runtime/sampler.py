"""The runtime sampler: K prior samples of an exported PUNet with numpy + onnxruntime.

Per image: the encoder (UNet features) and the prior run once (per tile when
tiled), z_k = mu + sigma * eps_k is drawn once per image and shared by all its
tiles, and the decoder (first fcomb conv split algebraically, K cheap passes,
reductions fused) runs over spatial chunks, so K x H x W never sits in memory.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError, RuntimeModelError
from .consensus import reduce_samples
from .manifest import load_manifest
from .session import ProviderReport, create_session
from .tiling import Tile, image_stats, padded_shape, plan_tiles, read_window

log = logging.getLogger(__name__)

NORMALIZE = ("image", "tile", "none")
AUTO_TILE_LIMIT = 1536  # images with a side above this are tiled by default
AUTO_TILE = 1024
CHUNK_BYTES = 64 << 20  # decoder working set per call (K x C x rows x W float32)


def latent_eps(seed: int, name: str, k: int, latent_dim: int, slice_index: int = 0) -> np.ndarray:
    """Standard normal draws for one image, independent of batch order or splitting.

    Derived from sha256(f"{seed}:{file name}:{slice_index}"), so every process
    and every block of the image draws the same latents. The first k rows do
    not depend on k (more samples extend, never reshuffle, the draws).

    Args:
        seed: the user's --seed.
        name: file name of the image (its basename is used).
        k: number of samples.
        latent_dim: L.
        slice_index: z index for stacks.

    Returns:
        (k, latent_dim) float32.
    """
    key = f"{int(seed)}:{Path(str(name)).name}:{int(slice_index)}".encode()
    digest = hashlib.sha256(key).digest()
    rng = np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest, dtype=np.uint32))))
    return rng.standard_normal((k, latent_dim)).astype(np.float32)


class OnnxSampler:
    """Loads an export folder once and predicts mean probability, consensus and std.

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
        self.manifest = load_manifest(self.folder, verify=verify)
        m = self.manifest
        self.kind = m["kind"]
        self.multiple = int(m["size_multiple"])
        self.latent_dim = int(m.get("latent_dim", 0))
        self.default_samples = int(m.get("default_samples", 1))
        self.default_halo = int(m.get("default_halo", 2 * self.multiple))
        self.consensus_cfg = m["consensus"]
        self.normalization = m["normalization"]
        self.prior_stride = int(m.get("prior_stride") or self.multiple)
        self.min_size = int(m.get("min_size") or self.multiple)
        tiling = m.get("tiling") or {}
        if not tiling and m.get("model", {}).get("config", {}).get("align_corners"):
            tiling = {"mode": "approximate", "reason": "align_corners=True"}
        self.tiling_mode = str(tiling.get("mode", "exact"))
        self.tiling_reason = str(tiling.get("reason", ""))
        self._sessions = {}
        reports = []
        for name, graph in m["graphs"].items():
            session, report = create_session(self.folder / graph["file"], device=device, threads=threads)
            self._sessions[name] = session
            reports.append(report)
        self.provider_report: ProviderReport = reports[0]

    @property
    def providers(self) -> list[str]:
        """Execution providers really active (read back from onnxruntime)."""
        return list(self.provider_report.active)

    # ---------------------------------------------------------------- API
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
        """Predict one 2D image.

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
        if normalize not in NORMALIZE:
            raise ConfigError(f"normalize={normalize!r}: choose one of {', '.join(NORMALIZE)}")
        tiles = self.plan(image.shape, tile=tile, halo=halo)
        prep = self._preprocessor(image, normalize)
        if self.kind == "unet":
            return self._predict_unet(image, tiles, prep, on_tile)
        eps = self._eps(eps, k, seed)
        z = self._latents(image, tiles, prep, eps, on_tile)
        return self._decode_tiles(image, tiles, prep, z, return_samples, on_tile)

    def predict_batch(self, images: np.ndarray, *, eps: np.ndarray, normalize: str = "image") -> dict[str, np.ndarray]:
        """Untiled prediction of a batch of equally sized images in one graph call each.

        Args:
            images: (B, H, W) float32.
            eps: (K, B, L) standard normal draws.
            normalize: "image" (per image) or "none".

        Returns:
            {"prob", "consensus", "std"}: (B, H, W) float32.
        """
        x = np.stack([self._standardize(im, normalize) for im in np.asarray(images, dtype=np.float32)])[:, None]
        b, _, h, w = x.shape
        self.plan((h, w), tile=None)  # refuses images below the model's minimum size
        hp, wp = padded_shape((h, w), self.multiple)
        xp = np.stack([read_window(im[0], (0, hp, 0, wp), multiple=self.multiple) for im in x])[:, None]
        if self.kind == "unet":
            prob = self._sessions["model"].run(["prob"], {"image": xp})[0][:, 0, :h, :w]
            return self._unet_maps(prob[None])
        trunk = self._sessions["prior"].run(["prior_features"], {"image": xp})[0]
        mu, log_sigma = self._head(trunk.mean(axis=(2, 3)))
        z = (mu[None] + np.exp(log_sigma)[None] * np.asarray(eps, dtype=np.float32)).astype(np.float32)
        feats = self._sessions["encoder"].run(["features"], {"image": xp})[0][:, :, :h, :w]
        out = self._sessions["decoder"].run(["prob", "consensus", "std"], {"features": np.ascontiguousarray(feats), "z": z})
        return {name: arr[:, 0] for name, arr in zip(("prob", "consensus", "std"), out)}

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
        hp, wp = padded_shape((h, w), self.multiple)
        if min(hp, wp) < self.min_size:
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
        mu, log_sigma = self._head(sums / max(count, 1))
        return (mu[None] + np.exp(log_sigma)[None] * eps[:, None, :]).astype(np.float32)

    # ---------------------------------------------------------- internals
    def _eps(self, eps, k, seed) -> np.ndarray:
        if eps is None:
            k = self.default_samples if k is None else int(k)
            if k < 1:
                raise ConfigError(f"--samples {k}: need at least 1 sample")
            return np.random.default_rng(seed).standard_normal((k, self.latent_dim)).astype(np.float32)
        eps = np.asarray(eps, dtype=np.float32)
        if eps.ndim != 2 or eps.shape[1] != self.latent_dim:
            raise ConfigError(f"eps shape {eps.shape}: expected (K, {self.latent_dim})")
        return eps

    def _standardize(self, x: np.ndarray, normalize: str, stats: tuple[float, float] | None = None) -> np.ndarray:
        if normalize == "none" or self.normalization.get("mode") in (None, "none"):
            return np.asarray(x, dtype=np.float32)
        mean, std = stats if stats is not None else (float(np.mean(x, dtype=np.float64)), float(np.std(x, dtype=np.float64)))
        return ((np.asarray(x, dtype=np.float32) - mean) / (std + float(self.normalization.get("eps", 1e-7)))).astype(np.float32)

    def _preprocessor(self, image, normalize: str) -> Callable[[Tile], np.ndarray]:
        """Function tile -> (1, 1, h, w) float32 network input of its window."""
        stats = image_stats(image) if normalize == "image" else None
        mode = "none" if normalize == "none" else normalize

        def window(t: Tile) -> np.ndarray:
            raw = read_window(image, t.window, multiple=self.multiple)
            x = self._standardize(raw, mode, stats) if mode != "tile" else self._standardize(raw, "tile")
            return x[None, None]

        return window

    def _head(self, pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, log_sigma = self._sessions["prior_head"].run(["mu", "log_sigma"], {"pooled": pooled.astype(np.float32)})
        return mu, log_sigma

    def _latents(self, image, tiles: list[Tile], prep, eps: np.ndarray, on_tile) -> np.ndarray:
        """Prior trunk per tile, owned cells summed, head once: z (K, 1, L)."""
        sums, count = None, 0
        for i, t in enumerate(tiles):
            part, n = self.prior_sum(prep(t), t)
            sums, count = (part if sums is None else sums + part), count + n
            if on_tile and len(tiles) > 1:
                on_tile(i + 1, 2 * len(tiles))
        return self.latents_from_sums(sums, count, eps)

    def _decode_tiles(self, image, tiles, prep, z, return_samples, on_tile) -> dict[str, np.ndarray]:
        h, w = image.shape
        names = ["prob", "consensus", "std"] + (["probs"] if return_samples else [])
        out = {n: np.zeros((h, w), np.float32) for n in names[:3]}
        if return_samples:
            out["samples"] = np.zeros((z.shape[0], h, w), np.float32)
        for i, t in enumerate(tiles):
            feats = self._sessions["encoder"].run(["features"], {"image": prep(t)})[0]
            y0, y1, x0, x1 = t.core
            y1, x1 = min(y1, h), min(x1, w)
            if y1 > y0 and x1 > x0:
                wy, wx = t.window[0], t.window[2]
                core = feats[:, :, y0 - wy : y1 - wy, x0 - wx : x1 - wx]
                self._decode_chunks(core, z, names, out, (y0, x0))
            if on_tile and len(tiles) > 1:
                on_tile(len(tiles) + i + 1, 2 * len(tiles))
        return out

    def _decode_chunks(self, feats: np.ndarray, z: np.ndarray, names, out, origin) -> None:
        """Run the decoder over row chunks of (1, C, h, w) features, writing into `out`."""
        _, c, h, w = feats.shape
        rows = max(1, CHUNK_BYTES // max(1, 4 * z.shape[0] * c * w))
        for r in range(0, h, rows):
            chunk = np.ascontiguousarray(feats[:, :, r : r + rows])
            res = self._sessions["decoder"].run(names, {"features": chunk, "z": z})
            ys = slice(origin[0] + r, origin[0] + r + chunk.shape[2])
            xs = slice(origin[1], origin[1] + w)
            for name, arr in zip(names[:3], res[:3]):
                out[name][ys, xs] = arr[0, 0]
            if len(res) > 3:
                out["samples"][:, ys, xs] = res[3][:, 0, 0]

    def _predict_unet(self, image, tiles, prep, on_tile) -> dict[str, np.ndarray]:
        h, w = image.shape
        prob = np.zeros((h, w), np.float32)
        for i, t in enumerate(tiles):
            p = self._sessions["model"].run(["prob"], {"image": prep(t)})[0]
            y0, y1, x0, x1 = t.core
            y1, x1 = min(y1, h), min(x1, w)
            if y1 > y0 and x1 > x0:
                wy, wx = t.window[0], t.window[2]
                prob[y0:y1, x0:x1] = p[0, 0, y0 - wy : y1 - wy, x0 - wx : x1 - wx]
            if on_tile and len(tiles) > 1:
                on_tile(i + 1, len(tiles))
        return {k: v[0] for k, v in self._unet_maps(prob[None, None]).items()}

    def _unet_maps(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """One deterministic "sample": consensus by the K=1 rule, std 0."""
        c = self.consensus_cfg
        return reduce_samples(probs, rule=c["rule"], high=c["threshold_high"], low=c["threshold_low"])


def load_sampler(folder: str | Path, *, device: str = "auto", threads: int | None = None) -> OnnxSampler:
    """OnnxSampler with a clear error for paths that are not export folders."""
    folder = Path(folder)
    if folder.suffix == ".pt":
        raise RuntimeModelError(f"{folder}: a checkpoint, not an export; export it with `probda export {folder} --format onnx`")
    return OnnxSampler(folder, device=device, threads=threads)
