"""The backend interface: a model's per-window operations behind the one prediction engine.

Per window (one tile of the exact tiling, or the whole image) the engine (`predict.predict_image`) calls
- `window_input(image, tile, ...)`: the standardised network input (1, 1, h, w) (shared here);
- `prior_sum(window, tile)`: the prior trunk summed over the cells the tile owns;
- `latents_from_sums(sums, count, eps)`: the prior head once per image, z = mu + sigma * eps;
- `predict_tile(window, tile, z, shape)`: the maps of the tile's core.
Backends: `OnnxBackend` (export folders, onnxruntime; `runtime.onnx_backend`) and `TorchBackend`
(checkpoints and modules; `models.backend`, outside runtime/ since it imports torch); `backends.load_backend`
picks one. This module imports neither onnxruntime nor torch.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..method import FLOAT_MAPS, PREDICT_NORMALIZATIONS, check_choice, check_samples, latent_eps, standardize
from .tiling import Tile, plan_tiles, read_window, round_up, with_halo

log = logging.getLogger(__name__)

AUTO_TILE_LIMIT = 1536  # images with a side above this are tiled by default
AUTO_TILE = 1024


@dataclass(frozen=True)
class ProviderReport:
    """What was asked for and what runs (a backend's execution providers, or torch and its device).

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


class Backend(ABC):
    """A model behind the per-window operations of the engine (`runtime.predict.predict_image`).

    What every backend shares is here: the spec of its model, tiling plans, window inputs, latent draws
    and whole-image `predict`. Each backend implements the three operations the engine calls, with the
    same meaning everywhere: `prior_sum`, `latents_from_sums` and `predict_tile`
    (OnnxBackend in `runtime.onnx_backend`, TorchBackend in `models.backend`).

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
        self.maps = tuple(m.get("maps", FLOAT_MAPS))  # + "boundary" for models trained with --boundaries
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

    def open(self) -> "Backend":
        """This backend (tasks call `.open()` on a backend or a BackendRef alike)."""
        return self

    # ------------------------------------------------- the engine's operations
    @abstractmethod
    def prior_sum(self, window: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        """Prior trunk of one tile's window, summed over the trunk cells its core owns.

        Trunk cell j of the whole (padded) image reads input pixels from prior_stride * j on; the tile
        whose core holds that pixel owns the cell. Window origins are multiples of the stride and the
        halo covers the prior's receptive field, so the owned cells are computed exactly as in the whole
        image and their sum over all tiles is the whole image's. UNets: ((1, 0) zeros, 0).

        Args:
            window: (1, 1, h, w) float32 network input of `tile` (`window_input`).

        Returns:
            (sums (1, Cp) float64, number of cells summed).
        """

    def owned_sum(self, trunk: np.ndarray, tile: Tile) -> tuple[np.ndarray, int]:
        """`prior_sum`'s last step: the (1, Cp, h', w') trunk map of a window summed over the cells `tile` owns."""
        ys, xs = tile.core_in_window(self.prior_stride)
        part = trunk[:, :, ys, xs]
        return part.sum(axis=(2, 3), dtype=np.float64), int(part.shape[2] * part.shape[3])

    @abstractmethod
    def latents_from_sums(self, sums: np.ndarray, count: int, eps: np.ndarray) -> np.ndarray:
        """The prior head on the mean trunk cell: z = mu + sigma * eps, (K, 1, L) float32 for eps (K, L)."""

    @abstractmethod
    def predict_tile(self, window: np.ndarray, tile: Tile, z: np.ndarray | None, shape: tuple[int, int], *,
                     samples: bool = False) -> dict[str, np.ndarray]:
        """Maps of one tile's core, clipped to the (H, W) image.

        Args:
            window: (1, 1, h, w) from `window_input`.
            z: (K, 1, L) latents of the image (None for UNets).
            shape: (H, W) of the image.
            samples: also return the K sample maps as "samples" (K, h, w) (PUNets).

        Returns:
            {"prob", "consensus", "std"} (+ "boundary" for boundary models): (h, w) float32 of the clipped core.
        """

    # ------------------------------------------------------ whole images
    def predict(
        self,
        image: np.ndarray,
        *,
        k: int | None = None,
        eps: np.ndarray | None = None,
        seed: int = 0,
        name: str = "",
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
            eps: (K, L) standard normal draws; if None, `method.latent_eps(seed, name, K, L)`, the draws
                `probda segment --seed SEED` makes for a file called `name`.
            seed, name: see eps.
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
        from .predict import predict_image  # the engine and a writer, only when predicting whole images here
        from .sinks import MemorySink

        eps = self.draw_eps(eps, k, seed, name) if self.kind == "punet" else None
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
        check_choice("--normalize", normalize, PREDICT_NORMALIZATIONS)

    def draw_eps(self, eps: np.ndarray | None, k: int | None, seed: int, name: str = "") -> np.ndarray:
        """(K, L) float32 draws: `eps` checked, or `method.latent_eps(seed, name, K, L)`.

        Raises:
            ConfigError: K < 1 or eps of the wrong shape.
        """
        if eps is None:
            k = check_samples(self.default_samples if k is None else k)
            return latent_eps(seed, name, k, self.latent_dim)
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
            mean, std = stats if normalize == "image" else (None, None)
            x = standardize(x, mean=mean, std=std, eps=float(self.normalization.get("eps", 1e-7)))
        return x[None, None]
