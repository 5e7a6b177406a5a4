"""bioimage.io model zoo packages of PUNets: a deterministic single graph, packaging and offline validation.

Heavy imports (torch, bioimageio) happen inside the functions.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_bioimageio", "validate_package", "ZooReport", "ZooSummary"]


def __getattr__(name: str) -> Any:
    if name in ("export_bioimageio", "ZooReport"):
        from . import package

        return getattr(package, name)
    if name in ("validate_package", "ZooSummary"):
        from . import validate

        return getattr(validate, name)
    raise AttributeError(name)
