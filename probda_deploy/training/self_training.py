"""Self-training adaptation (docs/method.md, "Adaptation strategies"): Mean Teacher and FixMatch, separate or joint.

One strategy class covers the four variants; they differ only in who makes
the pseudo-labels, which view the student sees, and whether labeled source
batches join each step.

| strategy     | joint | name         | pseudo-labels from (default, option)     | alignment |
| mean-teacher | no    | mean-teacher | the frozen source model; the EMA model   | off       |
| fixmatch     | no    | fixmatch     | the EMA model; the model itself          | on        |
| mean-teacher | yes   | adamt        | as mean-teacher                          | off       |
| fixmatch     | yes   | adamatch     | as fixmatch                              | on        |

The student learns the labels of a clean view from a noisy one (`noise-background`) and the EMA of the
student is deployed. FixMatch's reference labeler, the model being trained (`teacher="model"`), feeds every
step's change into the next step's labels and collapses on the benchmark's shifts; its EMA (`teacher="ema"`,
the default) lags the student and pulls it back (docs/experiments.md, "FixMatch: why it collapses").
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.augment import VIEW_AUGMENTS, flip_rotate
from ..data.patches import PatchSampler
from ..errors import ConfigError
from ..models.checkpoint import EMA_KEY, ema_state
from ..method import (HIGH, LABELERS, LABELERS_OF, LOSSES, LOW, SELECT_ON, STRATEGIES, TRAIN_NORMALIZATIONS, VIEWS,
                      check_choice, filter_weights)
from .losses import supervised_loss
from .pseudo_labels import PseudoLabelConfig, align_distribution, ema_update, pseudo_labels
from .health import HealthBounds, Snapshot, collapse, snapshot, verdict
from .validation import dice_scores, mean_prediction

TEACHER_HORIZONS = 3.0  # the EMA labels (teacher="ema"): its time constant sets how far self-training moves
AVERAGE_HORIZONS = 10.0  # the EMA only deployed (source teacher): it averages the student's noise, with a short lag


@dataclass(frozen=True)
class AdaptConfig:
    """Adaptation options. Paper (LiveCELL): lr 1e-5, 10k iterations, batch 2, EMA 0.999.

    probda scales the run to CPU budgets: 1000 iterations at lr 3e-4. The EMA
    momentum follows the run length (`momentum`). The pseudo-labels come from
    the frozen source model unless `teacher="ema"` (`labeler`).
    """

    strategy: str = "mean-teacher"
    teacher: str | None = None  # who labels (`labeler`); None = the strategy's default
    joint: bool = False
    filter: str = "masking"
    consensus: str = "agree"
    samples: int = 16
    upper: float = HIGH  # consensus thresholds (--threshold-high, --threshold-low)
    lower: float = LOW
    iterations: int = 1000
    batch_size: int = 4
    patch_size: int = 256
    lr: float = 3e-4
    ema: float | None = None  # None: follows the run length (see `momentum`)
    distribution_alignment: bool | None = None  # None: on for FixMatch, off for mean teacher
    reconstruction: str = "dice"
    # views (method.VIEWS); None = the strategy's default (see `views`)
    teacher_view: str | None = None
    student_view: str | None = None
    normalization: str = "image"
    val_fraction: float = 0.1
    val_every: int = 100
    val_samples: int = 8
    select_on: str = "last"
    from_scratch: bool = False
    seed: int = 0

    @property
    def name(self) -> str:
        if self.joint:
            return "adamt" if self.strategy == "mean-teacher" else "adamatch"
        return self.strategy

    @property
    def views(self) -> tuple[str, str]:
        """(teacher, student) view names. Defaults: geometry only for the teacher (blur dilates the
        source model's masks); for the student noise, an illumination ramp and an additive smooth
        background (it learns the confident labels under uneven light and out-of-focus haze)."""
        return self.teacher_view or "none", self.student_view or "noise-background"

    @property
    def labeler(self) -> str:
        """Who makes the pseudo-labels: "source" (the frozen source model), "ema" (the EMA model) or "model"
        (the model being trained). Mean teacher: source (ema from scratch); FixMatch: ema."""
        if self.teacher is not None:
            return self.teacher
        return "ema" if self.strategy == "fixmatch" or self.from_scratch else "source"

    @property
    def momentum(self) -> float:
        """EMA momentum: `ema`, or 1 - horizons / iterations within [0.9, 0.9999].

        An EMA that labels (TEACHER_HORIZONS) feeds its labels back through the student, so the number of
        its time constants a run spans sets how far the model moves; an EMA that is only deployed
        (AVERAGE_HORIZONS) averages the student's noise with a short lag (docs/experiments.md).
        """
        if self.ema is not None:
            return self.ema
        horizons = AVERAGE_HORIZONS if self.labeler == "source" else TEACHER_HORIZONS
        return min(max(1 - horizons / max(self.iterations, 1), 0.9), 0.9999)

    @property
    def fixed_labels(self) -> bool:
        """Pseudo-labels made once per image before the run (`pseudo_labels.source_maps`): the frozen source
        model labels a geometry-only view with whole-image statistics, so its labels never change."""
        return self.labeler == "source" and self.views[0] == "none" and self.normalization == "image"

    @property
    def aligned(self) -> bool:
        return self.strategy == "fixmatch" if self.distribution_alignment is None else self.distribution_alignment

    @property
    def pseudo(self) -> PseudoLabelConfig:
        return PseudoLabelConfig(samples=self.samples, rule=self.consensus, high=self.upper, low=self.lower, filter=self.filter)

    def check(self) -> None:
        check_choice("--strategy", self.strategy, STRATEGIES)
        if self.teacher is not None:
            check_choice("--teacher", self.teacher, LABELERS)
        allowed = LABELERS_OF[self.strategy]
        if self.teacher is not None and self.teacher not in allowed:
            raise ConfigError(f"--teacher {self.teacher} does not go with --strategy {self.strategy}; "
                              f"choose one of {', '.join(allowed)}")
        if self.teacher == "source" and self.from_scratch:
            raise ConfigError("--teacher source cannot start --from-scratch: the source model is the teacher")
        check_choice("--select-on", self.select_on, SELECT_ON)
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ConfigError(f"--ema must be in [0, 1), got {self.ema}")
        for flag, view in (("--teacher-view", self.teacher_view), ("--student-view", self.student_view)):
            if view is not None:
                check_choice(flag, view, VIEWS)
        check_choice("--loss", self.reconstruction, LOSSES)
        check_choice("--normalization", self.normalization, TRAIN_NORMALIZATIONS)
        self.pseudo  # validates rule, filter, thresholds


class SelfTrainingStrategy:
    """Consensus-filtered self-training on unlabeled target patches (plus labeled source patches if joint)."""

    def __init__(self, model: nn.Module, cfg: AdaptConfig, target: PatchSampler, val: dict[str, np.ndarray], *,
                 source: PatchSampler | None = None, source_fraction: float | None = None,
                 source_health: Snapshot | None = None, bounds: HealthBounds = HealthBounds()):
        cfg.check()
        if cfg.joint and source is None:
            raise ConfigError("joint adaptation needs labeled source data (--source-images/--source-labels)")
        has_maps = target is not None and target.data.labels is not None
        if has_maps and not cfg.fixed_labels:
            raise ConfigError("target patches come with pseudo-label maps, but this configuration labels them at every step")
        self.name, self.cfg, self.model = cfg.name, cfg, model
        self.starts_healthy = not cfg.from_scratch  # best.pt holds the source model until a validation is healthy
        self.target, self.source, self.val = target, source, val
        # average: the EMA of the student (deployed); teacher: makes the pseudo-labels (the average, or the source model)
        self.average = self.teacher = None
        if cfg.labeler != "model":
            self.average = _frozen_copy(model)
            if cfg.labeler == "ema":
                self.teacher = self.average
            elif not has_maps:  # with the source model's maps there is nothing left for a teacher to do
                self.teacher = _frozen_copy(model)
        self.source_fraction = source_fraction
        self.target_fraction: float | None = None  # running mean of pseudo-label foreground (alignment)
        self.device = torch.device("cpu")
        self.source_health, self.bounds = source_health, bounds
        self._iteration = 0

    @property
    def deployed(self) -> nn.Module:
        """The model users get: the EMA of the student for mean-teacher runs."""
        return self.average if self.average is not None else self.model

    def parameters(self):
        return list(self.model.parameters())

    def to(self, device, memory_format=torch.contiguous_format):
        self.device = torch.device(device)
        for m in (self.model, self.average, self.teacher):  # average and teacher may be one module: .to is idempotent
            if m is not None:
                m.to(device, memory_format=memory_format)

    def sample_batch(self, rng):
        x, maps = self.target.sample(rng, self.cfg.batch_size)
        teacher_view, student_view = self.cfg.views
        if maps is None:
            (x,) = flip_rotate(rng, x)
            batch = {"x_teacher": VIEW_AUGMENTS[teacher_view](rng, x)}
        else:  # the source model's labels of the whole image, cropped and flipped with the patch
            x, maps = flip_rotate(rng, x, maps)
            batch = {"pseudo": maps}
        batch["x_student"] = VIEW_AUGMENTS[student_view](rng, x)
        if self.cfg.joint:
            xs, ys = self.source.sample(rng, self.cfg.batch_size)
            xs, ys = flip_rotate(rng, xs, ys)
            batch.update(x_source=xs, y_source=ys)
        return batch

    def step(self, batch):
        if "pseudo" in batch:
            y, c = batch["pseudo"].chunk(2, dim=1)
            w = filter_weights(c, self.cfg.filter)
        else:
            labeler = self.teacher if self.teacher is not None else self.model
            y, w, c = pseudo_labels(labeler, batch["x_teacher"], self.cfg.pseudo)
        if self.cfg.aligned:
            y = self._align(y)
        loss, terms = supervised_loss(self.model, batch["x_student"], y, w, reconstruction=self.cfg.reconstruction)
        logs = {"target_loss": float(loss.detach()), **{f"target_{k}": v for k, v in terms.items()},
                "kept": float((w > 0).float().mean()), "consensus": float(c.mean()),
                "pseudo_foreground": float((y[:, :1] >= 0.5).float().mean())}
        if self.cfg.joint:
            src_loss, src_terms = supervised_loss(self.model, batch["x_source"], batch["y_source"],
                                                  reconstruction=self.cfg.reconstruction)
            loss = (src_loss + loss) / 2
            logs.update(source_loss=float(src_loss.detach()), **{f"source_{k}": v for k, v in src_terms.items()})
        return loss, logs

    def _align(self, y: torch.Tensor) -> torch.Tensor:
        """Aligns the foreground channel (a boundary channel is left as it is)."""
        fg = y[:, :1]
        frac = float((fg >= 0.5).float().mean())  # hard counts, as the reference
        if self.source_fraction is None:  # the starting model's own fraction on the target
            self.source_fraction = frac
        self.target_fraction = frac if self.target_fraction is None else 0.99 * self.target_fraction + 0.01 * frac
        fg = align_distribution(fg, source_fraction=self.source_fraction, target_fraction=self.target_fraction)
        return torch.cat([fg, y[:, 1:]], dim=1)

    def on_step_end(self, iteration: int) -> None:
        self._iteration = iteration
        if self.average is None:
            return
        momentum = min(1 - 1 / (iteration + 1), self.cfg.momentum) if self.cfg.joint else self.cfg.momentum
        ema_update(self.average, self.model, momentum)

    def validate(self) -> dict[str, float]:
        """Label-free health of the deployed model on held-out target patches (true dice if labels are given).

        val_metric (scheduler) = 1 - dice(student mean, deployed mean). best.pt is chosen by `select_on`:
        "last" = the latest healthy checkpoint, "pseudo" = that agreement, "labels" = true dice.
        """
        x = self.val["x"]
        now = snapshot(self.deployed, x, k=self.cfg.val_samples, device=self.device,
                       high=self.cfg.upper, low=self.cfg.lower)
        student = mean_prediction(self.model, x, k=self.cfg.val_samples, device=self.device)
        agreement = dice_scores(student, now.prob)["dice_soft"]
        out = {"val_metric": 1 - agreement, "val_agreement": agreement,
               **{f"val_{k}": v for k, v in now.stats().items()}}
        if self.source_health is not None:
            out["val_foreground_ratio"] = now.foreground / max(self.source_health.foreground, 1e-6)
            word, reason = verdict(self.source_health, now, self.bounds, feedback=self.cfg.labeler != "source")
            out.update(verdict=word, verdict_reason=reason, healthy=word != "drifting")
            stop = collapse(self.source_health, now, self.bounds)
            if stop:
                out["stop"] = stop
        if self.val.get("y") is not None:
            true = dice_scores(now.prob, self.val["y"])
            out.update(val_dice=true["dice_soft"], val_dice_hard=true["dice_hard"])
        out["select_metric"] = {"last": -self._iteration, "pseudo": out["val_metric"],
                                "labels": 1 - out.get("val_dice", 0.0)}[self.cfg.select_on]
        return out

    def checkpoint_extra(self) -> dict:
        extra = {"adapt_state": {"target_fraction": self.target_fraction, "source_fraction": self.source_fraction}}
        if self.average is not None:  # the deployed weights; a source teacher is rebuilt from the source checkpoint
            extra[EMA_KEY] = {k: v.detach().cpu() for k, v in self.average.state_dict().items()}
        return extra

    def load_extra(self, ckpt: dict) -> None:
        if self.average is not None:
            self.average.load_state_dict(ema_state(ckpt))
        state = ckpt.get("adapt_state", {})
        self.target_fraction = state.get("target_fraction")
        if state.get("source_fraction") is not None:
            self.source_fraction = state["source_fraction"]


def _frozen_copy(model: nn.Module) -> nn.Module:
    copy_ = copy.deepcopy(model).eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    return copy_
