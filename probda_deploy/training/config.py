"""Training configuration: a frozen dataclass with the paper's defaults scaled for CPU, loadable from TOML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """Source training options.

    The paper trains PUNets with lr 1e-5 for 100k iterations on 512 px patches on a GPU; probda's
    defaults are lr 1e-4, 2000 iterations and 256 px patches (`probda train` uses 128 px on a CPU,
    `method.PATCH_SIZE`).
    """

    model: str = "punet-small"
    iterations: int = 2000
    batch_size: int = 4
    patch_size: int = 256
    lr: float = 1e-4
    augment: str = "robust"
    reconstruction: str = "dice"
    val_fraction: float = 0.1
    val_every: int = 100
    val_samples: int = 8
    min_foreground: float = 0.0
    # "image": patches standardised with their image's statistics, as prediction does; "patch": reference code
    normalization: str = "image"
    # a second output channel: object boundaries from instance labels (instances split at the predicted boundaries)
    boundaries: bool = False
    seed: int = 0


def load_toml(path: str | Path, cls=TrainConfig, base=None):
    """Read a TOML file into `cls`: top-level keys named like its fields, and an optional [model_options] table.

    Unknown keys raise ConfigError naming the file and the key.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names - {"model_options"})
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return replace(base if base is not None else cls(), **{k: v for k, v in data.items() if k in names}), data.get("model_options", {})
