"""The one training loop: device, AMP, checkpoints, exact resume, validation, scheduler, progress.

Strategies (source training, mean teacher, FixMatch, joint) plug in through
the `Strategy` protocol. Each step reseeds torch and numpy from (seed,
iteration), so a resumed run reproduces an uninterrupted one exactly on CPU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, TrainingStopped
from ..models.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


class Strategy(Protocol):
    """What the loop needs from a training strategy."""

    name: str
    model: nn.Module  # the trained (student) model

    def parameters(self) -> list[nn.Parameter]: ...
    def to(self, device: torch.device, memory_format: torch.memory_format) -> None: ...
    def sample_batch(self, rng: np.random.Generator) -> dict[str, np.ndarray]: ...
    def step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...
    def on_step_end(self, iteration: int) -> None: ...
    # must contain "val_metric" (lower is better; drives the scheduler); optional "select_metric" picks
    # best.pt instead (lower is better), optional "healthy" (False: never best.pt), optional "stop" (a
    # reason) ends the run without saving it
    def validate(self) -> dict[str, float]: ...
    def checkpoint_extra(self) -> dict: ...
    def load_extra(self, ckpt: dict) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    """Loop settings (docs/method.md, "Source training": Adam, ReduceLROnPlateau factor 0.9, patience 10)."""

    iterations: int = 1000
    lr: float = 1e-4
    val_every: int = 100
    seed: int = 0
    scheduler_factor: float = 0.9
    scheduler_patience: int = 10
    amp: bool = True


@dataclass
class FitResult:
    run_dir: Path
    iterations: int
    best_metric: float
    last_metrics: dict = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"


def _seed_step(seed: int, iteration: int) -> np.random.Generator:
    torch.manual_seed((seed * 1_000_003 + iteration) % (2**63 - 1))
    return np.random.default_rng([seed, iteration])


# NHWC: oneDNN (CPU) and cuDNN (AMP) run the 3x3 convs of a step ~8% faster (docs/experiments.md)
MEMORY_FORMAT = torch.channels_last


def _to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> tensors on `device`; images (B, C, H, W) in MEMORY_FORMAT, pinned for an async CUDA copy."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(v))
            if device.type == "cuda":
                t = t.pin_memory()
            t = t.to(device, non_blocking=True)
            v = t.contiguous(memory_format=MEMORY_FORMAT) if t.ndim == 4 else t
        out[k] = v
    return out


class _Optim:
    """Optimizer, scheduler and grad scaler, with their state."""

    def __init__(self, params, cfg: LoopConfig, device: torch.device):
        self.opt = torch.optim.Adam(params, lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=cfg.scheduler_factor, patience=cfg.scheduler_patience)
        self.use_amp = cfg.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()

    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict()}

    def load(self, ckpt: dict) -> None:
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])


def fit(strategy: Strategy, cfg: LoopConfig, *, run_dir: Path, device: str = "cpu", resume: bool = False,
        extra: dict | None = None, on_progress: Callable[[int, int, dict], None] | None = None) -> FitResult:
    """Train `strategy` for `cfg.iterations` steps (total, counting resumed ones).

    Writes `run_dir/latest.pt` (full state) at every validation and at the end,
    `run_dir/best.pt` when the validation metric improves at a healthy validation, and
    appends one JSON line per validation to `run_dir/metrics.jsonl`. A strategy with
    `starts_healthy` (adaptation: the source model) gets its starting weights as best.pt
    first, so that a run that is never healthy leaves the model it started from.

    Args:
        extra: entries stored in every checkpoint (train_config, provenance, ...).
        on_progress: called after every step with (iteration, total, logs).

    Raises:
        ConfigError: run_dir already holds a run and resume is False.
        CheckpointError: --resume of a run folder that does not exist, or whose latest.pt does not match this run.
    """
    run_dir = Path(run_dir)
    latest, best_path, metrics_path = run_dir / "latest.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    if latest.exists() and not resume:
        raise ConfigError(f"{run_dir}: already holds a run (latest.pt); pass --resume to continue it or choose another -o")
    if resume and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: nothing to resume (no such run folder); check -o or start without --resume")
    if not latest.exists():
        _clear_orphans(run_dir, resume)
        resume = False
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    strategy.to(dev, MEMORY_FORMAT)
    optim = _Optim(strategy.parameters(), cfg, dev)
    start, best, resumed_metrics = 0, float("inf"), {}
    if resume:
        start, best, resumed_metrics = _resume(strategy, optim, latest, metrics_path, dev)
    extra = dict(extra or {})
    extra["loop_config"] = asdict(cfg)
    best_iteration = int(resumed_metrics.get("best_iteration", 0))
    if start == 0 and getattr(strategy, "starts_healthy", False):
        start_metrics = {"iteration": 0, "best_iteration": 0, "verdict": "unchanged",
                         "verdict_reason": "the starting weights, before any adaptation"}
        ckpt = _checkpoint(strategy, optim, 0, best, start_metrics, extra, cfg.seed)
        save_checkpoint({k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler")}, best_path)
    t0, logs_acc, last_metrics = time.perf_counter(), {}, dict(resumed_metrics)
    for it in range(start, cfg.iterations):
        rng = _seed_step(cfg.seed, it)
        batch = _to_tensors(strategy.sample_batch(rng), dev)
        strategy.model.train()
        with torch.autocast(device_type=dev.type, dtype=torch.float16, enabled=optim.use_amp):
            loss, logs = strategy.step(batch)
        if not torch.isfinite(loss):
            raise ConfigError(f"{run_dir}: loss became {float(loss)} at iteration {it + 1}; lower --lr")
        optim.step(loss)
        strategy.on_step_end(it + 1)
        logs = {"loss": float(loss.detach()), **logs}
        for k, v in logs.items():
            logs_acc.setdefault(k, []).append(v)
        done = it + 1
        if done % cfg.val_every == 0 or done == cfg.iterations:
            _seed_step(cfg.seed + 7919, done)
            last_metrics = _validate(strategy, optim, logs_acc, done)
            logs_acc = {}
            if "stop" in last_metrics:
                last_metrics["best_iteration"] = best_iteration  # health.json names the checkpoint best.pt holds
                with open(metrics_path, "a") as f:
                    f.write(json.dumps({**last_metrics, "best": False}) + "\n")
                raise TrainingStopped(f"{run_dir}: stopped at iteration {done}: {last_metrics['stop']}; "
                                      f"{_kept(best_path, best_iteration)}")
            selected = last_metrics.get("select_metric", last_metrics["val_metric"])
            improved = bool(last_metrics.get("healthy", True)) and selected < best
            best = min(best, selected) if improved else best
            best_iteration = done if improved else best_iteration
            last_metrics["best_iteration"] = best_iteration
            ckpt = _checkpoint(strategy, optim, done, best, last_metrics, extra, cfg.seed)
            # latest.pt last: it is the commit point a resume starts from, so a kill between
            # these writes only repeats work (resume drops metrics lines past latest.pt)
            if improved:
                save_checkpoint({k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler")}, best_path)
            with open(metrics_path, "a") as f:
                f.write(json.dumps({**last_metrics, "best": improved}) + "\n")
            save_checkpoint(ckpt, latest)
            logs = {**logs, **{k: v for k, v in last_metrics.items() if k.startswith("val")}}
        if on_progress is not None:
            on_progress(done, cfg.iterations, logs)
    if start >= cfg.iterations:
        log.info("%s: already at iteration %d >= %d; nothing to do", run_dir, start, cfg.iterations)
    return FitResult(run_dir, max(start, cfg.iterations), best, last_metrics, time.perf_counter() - t0, str(dev))


def _kept(best_path: Path, best_iteration: int) -> str:
    """What best.pt holds after a stopped run."""
    if not best_path.exists():
        return "no checkpoint was kept; keep using the model you started from"
    if best_iteration:
        return f"{best_path} is the last healthy checkpoint (iteration {best_iteration})"
    return f"no validation was healthy: {best_path} holds the weights the run started from (the source model)"


def _validate(strategy: Strategy, optim: _Optim, logs_acc: dict, iteration: int) -> dict:
    strategy.model.eval()
    with torch.no_grad():
        metrics = strategy.validate()
    if "val_metric" not in metrics:
        raise ConfigError(f"strategy {strategy.name} returned no val_metric")
    optim.sched.step(metrics["val_metric"])
    train = {f"train_{k}": float(np.mean(v)) for k, v in logs_acc.items()}
    return {"iteration": iteration, **train, **metrics, "lr": optim.lr}


def _checkpoint(strategy: Strategy, optim: _Optim, iteration: int, best: float, metrics: dict, extra: dict, seed: int) -> dict:
    return make_checkpoint(
        strategy.model,
        iteration=iteration,
        best_metric=best,
        metrics=metrics,
        strategy=strategy.name,
        rng={"torch": torch.get_rng_state(), "seed": seed},
        **strategy.checkpoint_extra(),
        **optim.state(),
        **extra,
    )


def _clear_orphans(run_dir: Path, resume: bool) -> None:
    """A run killed before its first latest.pt leaves metrics.jsonl / best.pt / temp files: start over cleanly."""
    if not run_dir.is_dir():
        return
    orphans = [run_dir / "metrics.jsonl", run_dir / "best.pt", *run_dir.glob(".latest.pt.*.tmp"), *run_dir.glob(".best.pt.*.tmp")]
    orphans = [p for p in orphans if p.exists()]
    for p in orphans:
        p.unlink()
    if resume:
        log.warning("%s: no latest.pt to resume from (the run stopped before its first checkpoint); starting at iteration 0", run_dir)
    elif orphans:
        log.info("%s: removed %d file(s) of a run that stopped before its first checkpoint", run_dir, len(orphans))


def _resume(strategy: Strategy, optim: _Optim, latest: Path, metrics_path: Path, dev: torch.device) -> tuple[int, float, dict]:
    ckpt = load_checkpoint(latest, map_location=dev)
    if ckpt.get("strategy") != strategy.name:
        raise CheckpointError(f"{latest}: run was made by '{ckpt.get('strategy')}', not '{strategy.name}'; cannot resume it with this command")
    try:
        strategy.model.load_state_dict(ckpt["state_dict"])
        strategy.load_extra(ckpt)
        optim.load(ckpt)
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{latest}: does not match this run's model/options ({str(e)[:160]})") from None
    start = int(ckpt["iteration"])
    for name in ("latest.pt", "best.pt"):  # temp files of a checkpoint write that was killed
        for stale in latest.parent.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if metrics_path.exists():  # drop lines written after the checkpoint we resume from (or cut by a kill)
        lines = [ln for ln in metrics_path.read_text().splitlines() if _metrics_iteration(ln) <= start]
        metrics_path.write_text("".join(ln + "\n" for ln in lines))
    log.info("resuming %s at iteration %d", latest.parent, start)
    return start, float(ckpt.get("best_metric", float("inf"))), dict(ckpt.get("metrics", {}))


def _metrics_iteration(line: str) -> float:
    """Iteration of a metrics.jsonl line; inf for a blank or half-written one (dropped on resume)."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
