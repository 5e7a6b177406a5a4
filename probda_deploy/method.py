"""The method's vocabulary and the numeric rules every backend shares (docs/method.md).

Names: output maps and files, consensus rules with their thresholds, pseudo-label filters,
strategies, labelers, views, losses, normalisations, devices and formats. The CLI builds its
choices from these tuples and every check of a value goes through `check_choice` (one error
type, ConfigError); nothing else in the package restates them.

Numerics: standardisation, the seed rule of the latent draws, the consensus of K samples and
their reductions. They are written once with operators that numpy arrays and torch tensors
share, so the same lines run in the runtime (numpy), in training (torch) and inside the
exported graphs (torch, traced to ONNX). This module imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import ConfigError

# -- output maps and files ------------------------------------------------------------------
FLOAT_MAPS = ("prob", "consensus", "std")  # every model: mean foreground probability, consensus, population std
BOUNDARY_MAP = "boundary"  # models trained with --boundaries: mean object-boundary probability
ALL_MAPS = (*FLOAT_MAPS, BOUNDARY_MAP)
OUTPUTS = ("mask", "prob", "consensus", "std", "boundary", "labels", "instances", "objects")  # `--outputs`
INSTANCE_OUTPUTS = ("instances", "objects")  # `--instances`: NAME_instances.tif + NAME_objects.csv
DEFAULT_OUTPUTS = ("mask", "prob", "consensus", "std")
OUTPUT_FORMATS = ("auto", "tif", "ome-zarr")
EXPORT_FORMATS = ("onnx", "bioimageio")

# -- consensus and pseudo-labels ------------------------------------------------------------
CONSENSUS_RULES = ("agree", "confident")  # agree: probda's default; confident: the reference code
DEFAULT_RULE = "agree"
HIGH, LOW = 0.9, 0.1  # a sample is confident foreground at >= HIGH, confident background at <= LOW
CLASS_THRESHOLD = 0.5  # the mean's class, and the default mask threshold
FILTERS = ("masking", "weighting", "none")

# -- training and adaptation options --------------------------------------------------------
STRATEGIES = ("mean-teacher", "fixmatch")
LABELERS = ("source", "ema", "model")  # who makes the pseudo-labels (`--teacher`)
LABELERS_OF = {"mean-teacher": ("source", "ema"), "fixmatch": ("ema", "model")}
SELECT_ON = ("last", "pseudo", "labels")
AUGMENTS = ("paper", "robust")  # source training: flips only (reference code), or nnU-Net-style intensity too
VIEWS = ("none", "noise", "noise-shading", "noise-background", "weak", "strong", "strong-intensity")
LOSSES = ("dice", "bce", "dice+bce")
TRAIN_NORMALIZATIONS = ("image", "patch")  # statistics of the whole image (as prediction) or of each patch
PREDICT_NORMALIZATIONS = ("image", "tile", "none")
DEVICES = ("auto", "cpu", "cuda")
TORCH_EM_NORMS = ("InstanceNorm", "InstanceNormTrackStats", "GroupNorm", "BatchNorm")  # `probda import --norm`
PATCH_SIZE = {"cpu": 128, "cuda": 256}  # training patch side when not given: a CPU step on 128 px costs a quarter
STD_EPS = 1e-7
NORMALIZATION = {"mode": "zero_mean_unit_variance", "scope": "image", "eps": STD_EPS}  # recorded in checkpoints and exports


def check_choice(option: str, value, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`, else ConfigError naming the option."""
    value = getattr(value, "value", value)
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: unknown; choose one of {', '.join(choices)}")
    return value


def check_thresholds(high: float, low: float) -> tuple[float, float]:
    """(high, low) as floats if 0 <= low < 0.5 < high <= 1, else ConfigError."""
    high, low = float(high), float(low)
    if not 0.0 <= low < CLASS_THRESHOLD < high <= 1.0:
        raise ConfigError(f"consensus thresholds high={high}, low={low}: need 0 <= low < 0.5 < high <= 1")
    return high, low


def consensus_spec(rule: str = DEFAULT_RULE, high: float = HIGH, low: float = LOW) -> dict:
    """The consensus entry of an export's manifest, checked: rule, threshold_high, threshold_low, class_threshold."""
    high, low = check_thresholds(high, low)
    return {"rule": check_choice("--consensus-rule", rule, CONSENSUS_RULES), "threshold_high": high, "threshold_low": low,
            "class_threshold": CLASS_THRESHOLD}


def check_samples(k: int, *, least: int = 1) -> int:
    """K as an int if K >= least, else ConfigError."""
    if int(k) < least:
        raise ConfigError(f"--samples {k}: need at least {least} sample{'s' if least > 1 else ''}")
    return int(k)


# -- numerics -------------------------------------------------------------------------------
def standardize(x: np.ndarray, *, mean: float | None = None, std: float | None = None, eps: float = STD_EPS) -> np.ndarray:
    """(x - mean) / (std + eps) as float32; the statistics of `x` (float64 sums) unless given."""
    x = np.asarray(x, dtype=np.float32)
    m = float(x.mean(dtype=np.float64)) if mean is None else float(mean)
    s = float(x.std(dtype=np.float64)) if std is None else float(std)
    return ((x - m) / (s + eps)).astype(np.float32)


def standardize_batch(x: np.ndarray, eps: float = STD_EPS) -> np.ndarray:
    """`standardize` of each item of a (B, ...) array with its own statistics."""
    axes = tuple(range(1, x.ndim))
    m = x.mean(axis=axes, keepdims=True, dtype=np.float64)
    s = x.std(axis=axes, keepdims=True, dtype=np.float64)
    return ((x - m) / (s + eps)).astype(np.float32)


def latent_eps(seed: int, name: str, k: int, latent_dim: int, slice_index: int = 0) -> np.ndarray:
    """The one seed rule: (k, latent_dim) float32 standard normal draws for one image.

    Derived from sha256(f"{seed}:{basename of name}:{slice_index}") (slice_index: z of stacks), so every
    process, backend and block of an image draws the same latents. The first k rows do not depend on k
    (more samples extend, never reshuffle, the draws).
    """
    key = f"{int(seed)}:{Path(str(name)).name}:{int(slice_index)}".encode()
    digest = hashlib.sha256(key).digest()
    rng = np.random.default_rng(np.random.SeedSequence(list(np.frombuffer(digest, dtype=np.uint32))))
    return rng.standard_normal((k, latent_dim)).astype(np.float32)


def _as_float(mask, like):
    """A boolean array or tensor as 0/1 of `like`'s float dtype (ONNX has no Where on bool)."""
    return mask.to(like.dtype) if hasattr(mask, "to") else mask.astype(like.dtype)


def _sqrt(x):
    return x.sqrt() if hasattr(x, "sqrt") else np.sqrt(x)


def consensus(samples, *, rule: str = DEFAULT_RULE, high: float = HIGH, low: float = LOW, mean=None):
    """Fraction of the K samples (axis 0) that are confident and, for "agree", agree with the mean's class.

    agree: s >= high where mean >= 0.5, else s <= low; confident: s >= high or s <= low.
    numpy arrays or torch tensors; (K, ...) -> (...), multiples of 1/K.
    """
    check_choice("consensus rule", rule, CONSENSUS_RULES)
    hi, lo = _as_float(samples >= high, samples), _as_float(samples <= low, samples)
    if rule == "confident":
        hits = hi + lo  # low < 0.5 < high: never both
    else:
        m = samples.mean(0) if mean is None else mean
        fg = _as_float(m >= CLASS_THRESHOLD, samples)[None]
        hits = fg * hi + (1 - fg) * lo
    return hits.mean(0)


def reduce_samples(samples, *, rule: str = DEFAULT_RULE, high: float = HIGH, low: float = LOW) -> dict:
    """{"prob": mean, "consensus", "std": population std (ddof 0)} over axis 0 of K sample probabilities."""
    mean = samples.mean(0)
    std = _sqrt(((samples - mean[None]) ** 2).mean(0))
    return {"prob": mean, "consensus": consensus(samples, rule=rule, high=high, low=low, mean=mean), "std": std}


def filter_weights(c, mode: str):
    """Per-pixel loss weights from the consensus: masking 1[c == 1], weighting c, none 1."""
    check_choice("--filter", mode, FILTERS)
    if mode == "masking":
        return _as_float(c >= 1.0, c)
    if mode == "weighting":
        return c
    return c.new_ones(c.shape) if hasattr(c, "new_ones") else np.ones_like(c)
