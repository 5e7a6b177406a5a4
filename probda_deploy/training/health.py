"""Label-free health of an adaptation run: snapshots of the deployed model on held-out target patches.

A user adapting to unlabeled images cannot measure dice. What can be measured
without labels, and what each tells:
- foreground fraction versus the source model's: a run that drives it to ~0 or
  far above the source model's has collapsed or is drifting (stop the run);
- mean consensus and sample diversity: how sure the model is, and whether its
  PUNet samples still disagree anywhere;
- when the pseudo-labels come from a model that is being trained (an EMA teacher,
  FixMatch), its changes feed back into its own labels, and two signs of drift apply:
  most changed pixels are ones the source model was sure of (the model re-learns its
  own bias), or the mean consensus fell well below the source model's (its labels
  disagree with each other; EMA-teacher unfiltered runs that lost dice lost 0.25-0.34).
- with the frozen source model as teacher (the default) the labels cannot feed back,
  and both signs misfire on runs that gained: a student trained on soft unfiltered
  labels becomes less sure (runs that gained 0.02-0.04 dice lost 0.13-0.21
  consensus), and a student that learns the source model's sure pixels under uneven
  light corrects pixels the source model was sure of (61% of the changes in a run
  that gained 0.20). There the verdict rests on the foreground bounds and the share
  of changed pixels, and its sentence reports where the changes fell.
  See docs/experiments.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from ..method import HIGH, LOW, consensus
from ..models.inference import patch_samples


@dataclass(frozen=True)
class HealthBounds:
    """Stop the run when the target foreground fraction leaves [low, high] x the source model's, or the
    background fraction falls below low x the source model's (all-foreground, whatever the source's
    foreground: 3x a foreground fraction above 1/3 is never reached)."""

    low: float = 0.1
    high: float = 3.0
    # share of changed pixels below which the adapted model counts as unchanged
    unchanged: float = 0.002
    # share of changes on pixels the source model was sure of above which the run counts as drifting
    drift: float = 0.5
    # mean consensus below this fraction of the source model's: the run made the model less sure of the target
    unsure: float = 0.85


@dataclass
class Snapshot:
    """Label-free statistics of a model on held-out target patches."""

    foreground: float
    consensus: float
    diversity: float
    prob: np.ndarray  # (N, 1, H, W) float32 mean prediction
    mask: np.ndarray  # (N, 1, H, W) bool, mean prediction >= 0.5
    certain: np.ndarray  # (N, 1, H, W) bool, consensus == 1

    def stats(self) -> dict[str, float]:
        return {"foreground": self.foreground, "consensus": self.consensus, "diversity": self.diversity}


def sample_diversity(samples: torch.Tensor) -> float:
    """1 - mean pairwise dice of the hard sample masks (K, B, ...); 0 when all samples agree."""
    k = samples.shape[0]
    if k < 2:
        return 0.0
    hard = (samples >= 0.5).flatten(1).float()
    inter = hard @ hard.T
    sizes = hard.sum(1)
    denom = sizes[:, None] + sizes[None, :]
    dice = torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(inter))
    off = ~torch.eye(k, dtype=torch.bool)
    return float(1 - dice[off].mean())


@torch.no_grad()
def snapshot(model: torch.nn.Module, x: np.ndarray, *, k: int = 8, batch_size: int = 4,
             device: torch.device | str = "cpu", high: float = HIGH, low: float = LOW) -> Snapshot:
    """Statistics of `model` on (N, 1, H, W) standardised patches with K prior samples."""
    probs, certain, div, cons = [], [], [], []
    for i in range(0, len(x), batch_size):
        s = patch_samples(model, x[i : i + batch_size], k=k, first=i, device=device)  # foreground
        mean = s.mean(0)
        c = consensus(s, rule="agree", high=high, low=low, mean=mean)
        probs.append(mean.cpu().numpy())
        certain.append((c >= 1).cpu().numpy())
        cons.append(float(c.mean()))
        div.append(sample_diversity(s))
    prob = np.concatenate(probs)
    mask = prob >= 0.5
    return Snapshot(float(mask.mean()), float(np.mean(cons)), float(np.mean(div)), prob, mask, np.concatenate(certain))


def collapse(source: Snapshot, now: Snapshot, bounds: HealthBounds = HealthBounds()) -> str | None:
    """Why the run has collapsed or drifted too far (None if its foreground and background fractions are within bounds)."""
    if source.foreground >= 1e-3:
        ratio = now.foreground / source.foreground
        if ratio < bounds.low:
            return (f"target foreground fell to {now.foreground:.4f} ({ratio:.2f}x the source model's "
                    f"{source.foreground:.4f}); the run collapsed towards background")
        if ratio > bounds.high:
            return (f"target foreground grew to {now.foreground:.4f} ({ratio:.2f}x the source model's "
                    f"{source.foreground:.4f}); the run is drifting towards foreground")
    background, source_background = 1 - now.foreground, 1 - source.foreground
    if source_background >= 1e-3 and background / source_background < bounds.low:
        return (f"target background fell to {background:.4f} ({background / source_background:.2f}x the source "
                f"model's {source_background:.4f}); the run collapsed towards foreground")
    return None


def verdict(source: Snapshot, now: Snapshot, bounds: HealthBounds = HealthBounds(), *,
            feedback: bool = True) -> tuple[str, str]:
    """("improved" | "unchanged" | "drifting", one-sentence reason) from label-free statistics.

    feedback: the pseudo-labels come from a model being trained (EMA teacher, FixMatch), so changes of
        sure pixels and a fall in consensus are drift; False for the frozen source model as teacher.
    """
    reason = collapse(source, now, bounds)
    if reason:
        return "drifting", reason
    changed = source.mask != now.mask
    share = float(changed.mean())
    if share < bounds.unchanged:
        return "unchanged", f"only {100 * share:.2f}% of held-out target pixels changed class"
    if feedback and now.consensus < bounds.unsure * source.consensus:
        return "drifting", (f"mean consensus fell from {source.consensus:.3f} to {now.consensus:.3f}: the model grew "
                            "less sure of the target, its pseudo-labels disagree")
    on_sure = float((changed & source.certain).sum() / max(changed.sum(), 1))
    if feedback and on_sure > bounds.drift:
        return "drifting", (f"{100 * on_sure:.0f}% of the {100 * share:.1f}% pixels that changed class were pixels "
                            "the source model was sure of: the model re-learns its own bias")
    return "improved", (f"{100 * share:.1f}% of held-out target pixels changed class, {100 * (1 - on_sure):.0f}% of them "
                        f"where the source model was unsure; foreground {now.foreground / source.foreground:.2f}x the "
                        f"source model's; consensus {source.consensus:.3f} -> {now.consensus:.3f}")


HEALTH_FILE = "health.json"


def health_summary(metrics: list[dict], source: Snapshot, *, stopped: str | None = None) -> dict:
    """The run's label-free summary from its metrics.jsonl lines: source vs last validation, history, verdict."""
    keys = ("iteration", "val_foreground", "val_foreground_ratio", "val_consensus", "val_diversity", "val_agreement",
            "verdict", "val_dice", "best")
    history = [{k: m[k] for k in keys if k in m} for m in metrics]
    last = metrics[-1] if metrics else {}
    if stopped:
        word, reason = "collapsed", stopped
    else:
        word, reason = last.get("verdict", "unchanged"), last.get("verdict_reason", "no validation ran")
    return {
        "verdict": word,
        "reason": reason,
        "sentence": f"{_SENTENCE[word]}: {reason}.",
        "source": source.stats(),
        "adapted": {k[4:]: last[k] for k in ("val_foreground", "val_consensus", "val_diversity") if k in last},
        "teacher_student_agreement": last.get("val_agreement"),
        "best_iteration": int(last.get("best_iteration", 0)),  # the checkpoint in best.pt; 0: the source model's weights
        "history": history,
    }


_SENTENCE = {
    "improved": "Adaptation changed the target predictions without signs of drift",
    "unchanged": "Adaptation left the model essentially unchanged",
    "drifting": "Adaptation is drifting; prefer the source model or a shorter run",
    "collapsed": "Adaptation collapsed and was stopped",
}


def write_health(run_dir: Path, source: Snapshot, *, stopped: str | None = None) -> dict:
    """Write run_dir/health.json from run_dir/metrics.jsonl; returns the summary."""
    run_dir = Path(run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    summary = health_summary([json.loads(ln) for ln in lines if ln.strip()], source, stopped=stopped)
    with atomic_path(run_dir / HEALTH_FILE) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary
