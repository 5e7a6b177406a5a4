"""Consensus of PUNet samples (docs/method.md, "Pseudo-labels and consensus"), on torch sample stacks."""

from __future__ import annotations

import torch

CONSENSUS_RULES = ("agree", "confident")
FILTERS = ("masking", "weighting", "none")


def consensus_response(samples: torch.Tensor, *, rule: str = "agree", upper: float = 0.9, lower: float = 0.1,
                       mean: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of samples that are confident (and, for `agree`, agree with the mean's class).

    Args:
        samples: (K, ...) probabilities.
        rule: "agree" (probda default) or "confident" (reference code).
        mean: (...) the pseudo-label; computed from samples if None.

    Returns:
        (...) float in [0, 1].
    """
    hi, lo = samples >= upper, samples <= lower
    if rule == "confident":
        ok = hi | lo
    elif rule == "agree":
        mean = samples.mean(0) if mean is None else mean
        ok = torch.where(mean[None] >= 0.5, hi, lo)
    else:
        raise ValueError(f"unknown consensus rule '{rule}'; choose one of {CONSENSUS_RULES}")
    return ok.to(samples.dtype).mean(0)


def filter_weights(consensus: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-pixel loss weights: masking 1[c == 1], weighting c, none 1."""
    if mode == "masking":
        return (consensus >= 1.0).to(consensus.dtype)
    if mode == "weighting":
        return consensus
    if mode == "none":
        return torch.ones_like(consensus)
    raise ValueError(f"unknown filter '{mode}'; choose one of {FILTERS}")
