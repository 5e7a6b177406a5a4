"""Training and adaptation speed: probda against torch-em, side by side in one run.

Same machine, thread count, filters (16, 32, 64, 128), latent dim 6, 3 fcomb
convs, batch and patch size for both. Each round starts one fresh process per
engine (torch-em first, then probda, alternating over --rounds) and times
--steps steps after 2 warm-up steps; the table gives the median s/it over all
rounds and the ratio torch-em / probda (> 1: probda is faster).

  * source ELBO step. torch-em 0.10.9: `ProbabilisticUNet` + `ProbabilisticUNetLoss`
    + Adam on random tensors (its data loading not counted). probda: its own
    training loop (`fit` with the source strategy), in-loop flips/rotations and
    intensity augmentation included.
  * Mean Teacher step. torch-em: the teacher's forward() + 16 sample(), the
    reference consensus (threshold 0.9, masking), the masked ELBO on the student
    (`ProbabilisticUNetLoss` with the mask), Adam, EMA of the parameters
    (MeanTeacherTrainer's step). probda:
    `fit` with the mean-teacher strategy (16 samples, consensus masking), views
    included, twice: with `--teacher ema` (the paper's and torch-em's algorithm: the
    EMA teacher labels every batch) and with the default frozen source teacher,
    whose labels are made once per image before the run (`pseudo_labels.source_maps`)
    and cropped with each patch.
  * probda twice: `punet-small` (the paper's architecture at 16 filters) and
    `punet-small-fast` (the same UNet; prior and posterior nets at half width).
  * GFLOP per step of each (forward + backward, torch.utils.flop_counter) and the
    achieved GFLOP/s, so a difference in architecture shows (probda: the paper's
    UNet, 3 convs per level, no normalisation, average pooling; torch-em: its UNet2d,
    2 convs per level, InstanceNorm, max pooling, a 256-channel bottleneck level).
  * with --cli N: the real commands, `probda train` and `probda adapt`, wall time for
    N iterations on synthetic data (data loading, augmentation, validation,
    checkpoints), minus a 2-iteration run of the same command (start-up).

The torch-em side needs a venv with torch-em 0.10.9 (`.ci/torch_em_crosscheck.sh`
creates one: ~/.cache/probda-ci/torch-em-0.10.9-torch-2.13.0).

Usage:
    python benchmarks/train_speed.py --torch-em VENV [--threads 2] [--batch 4] [--patch 128]
                                     [--steps 8] [--rounds 3] [--cli 40] [--probda-only]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

FILTERS = [16, 32, 64, 128]
LATENT, FCOMB, SAMPLES = 6, 3, 16
PROBDA_VARIANTS = ("punet-small", "punet-small-fast")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-em", metavar="VENV", default=None, help="venv with torch-em 0.10.9")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cli", type=int, default=0, metavar="N", help="also time `probda train`/`probda adapt` for N iterations")
    p.add_argument("--probda-only", action="store_true", help="skip torch-em (no venv needed)")
    p.add_argument("--profile", action="store_true", help="also print where probda's step time goes")
    p.add_argument("--skip-steps", action="store_true", help="skip the side-by-side step table (profile / CLI only)")
    p.add_argument("--child", choices=["torch-em", *PROBDA_VARIANTS], help=argparse.SUPPRESS)
    return p.parse_args()


def say(msg: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def random_batch(batch: int, patch: int, seed: int = 0):
    """Standardised blob images and their binary masks, (B, 1, P, P) float32."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:patch, :patch]
    x = rng.normal(0, 0.3, (batch, 1, patch, patch))
    y = np.zeros_like(x)
    for b in range(batch):
        for _ in range(max(4, patch * patch // 1500)):
            cy, cx, r = rng.uniform(0, patch), rng.uniform(0, patch), rng.uniform(4, 10)
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            x[b, 0][inside] += 1.0
            y[b, 0][inside] = 1.0
    x = (x - x.mean()) / x.std()
    return x.astype("float32"), y.astype("float32")


def _flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops() / 1e9


def _timed(step, steps: int) -> list[float]:
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- torch-em (runs in its venv)
def torch_em_child(args) -> dict:
    import copy

    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".ci"))
    from torch_em_crosscheck import _import_torch_em  # loads torch-em's model code without its trainer deps

    cls, how = _import_torch_em()
    loss_mod = _torch_em_loss()
    torch.manual_seed(0)
    model = cls(input_channels=1, output_channels=1, num_filters=FILTERS, latent_dim=LATENT, no_convs_fcomb=FCOMB,
                beta=1.0, rl_swap=True, consensus_masking=True, device=torch.device("cpu"))
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = (torch.from_numpy(a) for a in random_batch(args.batch, args.patch))
    loss_fn = loss_mod.ProbabilisticUNetLoss()

    def source_step():
        model.train()
        opt.zero_grad()
        loss_fn(model, x, y).backward()
        opt.step()

    def pseudo_labels():
        # The reference consensus of the paper's code: N sigmoid prior samples, their mean, and the fraction of
        # samples confident (>= 0.9 or <= 0.1) per pixel, masked to 1[all]. torch-em 0.10.9's
        # ProbabilisticPseudoLabeler takes that fraction over the batch axis of the mean instead
        # (a (1, H, W) mask its own elbo() refuses), so its labeler is not run here.
        teacher.forward(x)
        samples = torch.stack([torch.sigmoid(teacher.sample()) for _ in range(SAMPLES)])
        confident = ((samples >= 0.9) | (samples <= 0.1)).float().mean(0)
        return samples.mean(0), (confident == 1).float()

    def mt_step():
        model.train()
        with torch.no_grad():
            pseudo, mask = pseudo_labels()
        opt.zero_grad()
        loss_fn(model, x, pseudo, mask).backward()
        opt.step()
        with torch.no_grad():  # MeanTeacherTrainer's momentum update (fixed momentum)
            for p, pt in zip(model.parameters(), teacher.parameters()):
                pt.data = pt.data * 0.99 + p.data * 0.01

    return {"source": _timed(source_step, args.steps), "mt": _timed(mt_step, args.steps),
            "source_gflop": _flops(source_step), "mt_gflop": _flops(mt_step), "how": how, "torch": torch.__version__}


def _torch_em_loss():
    """torch-em's self_training loss module, loaded from its file.

    `import torch_em.self_training` pulls in the trainers' dependencies (imageio, ...),
    which the light venv does not have; the loss module needs only torch and torch-em's DiceLoss.
    """
    import types

    root = Path(sys.modules["torch_em.model"].__path__[0]).parent
    dice = _load("torch_em.loss.dice", root / "loss" / "dice.py")
    sys.modules["torch_em.loss"].DiceLoss = dice.DiceLoss
    sys.modules["torch_em"].loss = sys.modules["torch_em.loss"]
    pkg = types.ModuleType("torch_em.self_training")
    pkg.__path__ = [str(root / "self_training")]
    sys.modules["torch_em.self_training"] = pkg
    return _load("torch_em.self_training.loss", root / "self_training" / "loss.py")


def _load(name: str, path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------- probda (its real training loop)
class _FixedPatches:
    """Stands in for a PatchSampler: the same batch every step (as torch-em's side gets); y may be None."""

    def __init__(self, x, y):
        self.x, self.y = x, y
        self.data = SimpleNamespace(labels=None if y is None else [])

    def sample(self, rng, batch_size: int):
        return self.x[:batch_size].copy(), None if self.y is None else self.y[:batch_size].copy()


def probda_child(args, variant: str) -> dict:
    import numpy as np
    import torch

    from probda_deploy.models import build_model
    from probda_deploy.training.self_training import AdaptConfig, SelfTrainingStrategy
    from probda_deploy.training.loop import LoopConfig, fit
    from probda_deploy.training.pseudo_labels import source_maps
    from probda_deploy.training.source import SupervisedStrategy

    torch.set_num_threads(args.threads)
    x, y = random_batch(args.batch, args.patch)
    patches = _FixedPatches(x, y)
    val = random_batch(2, args.patch, seed=1)
    out = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("source", "mt-ema", "mt"):
            torch.manual_seed(0)
            model = build_model(variant, latent_dim=LATENT, n_fcomb=FCOMB)
            if kind == "source":
                strategy = SupervisedStrategy(model, patches, val, batch_size=args.batch)
            else:
                cfg = AdaptConfig(batch_size=args.batch, patch_size=args.patch, samples=SAMPLES, filter="masking",
                                  teacher="ema" if kind == "mt-ema" else "source")
                maps = None if kind == "mt-ema" else np.stack(source_maps(model, list(x[:, 0]), cfg.pseudo))
                strategy = SelfTrainingStrategy(model, cfg, _FixedPatches(x, maps), {"x": val[0]})
            n = args.steps + 3  # 2 warm-up steps, and the last one also validates and checkpoints
            stamps = []
            loop = LoopConfig(iterations=n, lr=1e-4, val_every=n, seed=0)
            fit(strategy, loop, run_dir=Path(tmp) / kind, on_progress=lambda i, total, logs: stamps.append(time.perf_counter()))
            out[kind] = [b - a for a, b in zip(stamps[1:-2], stamps[2:-1])]
            out[f"{kind}_gflop"] = _flops(lambda: _one_step(strategy))
    return out


def _one_step(strategy) -> None:
    """One forward + backward of the strategy on a batch prepared as the loop prepares it."""
    import numpy as np
    import torch

    from probda_deploy.training.loop import _to_tensors

    loss, _ = strategy.step(_to_tensors(strategy.sample_batch(np.random.default_rng(0)), torch.device("cpu")))
    loss.backward()


# ---------------------------------------------------------------- where the time goes
def profile_breakdown(args, val_every: int = 100) -> list[tuple[str, float, float]]:
    """Median ms per part of one source step and one Mean Teacher step (same pieces as the loop runs)."""
    import numpy as np
    import torch

    from probda_deploy.models import build_model
    from probda_deploy.training.self_training import AdaptConfig, SelfTrainingStrategy
    from probda_deploy.training.loop import MEMORY_FORMAT, _to_tensors
    from probda_deploy.training.losses import L2_WEIGHT, RECONSTRUCTION, l2_norms
    from probda_deploy.models.punet import kl_diag_gaussians
    from probda_deploy.training.pseudo_labels import ema_update, pseudo_labels, source_maps
    from probda_deploy.training.source import SupervisedStrategy

    torch.set_num_threads(args.threads)
    from probda_deploy.data.patches import ImageSet, PatchSampler

    imgs = [random_batch(1, 256, seed=i) for i in range(20)]  # 20 images of 256 x 256, as the CLI rows use
    patches = PatchSampler(ImageSet([a[0, 0] for a, _ in imgs], [b[0, 0] for _, b in imgs], [str(i) for i in range(20)]),
                           args.patch)
    val = random_batch(8, args.patch, seed=1)
    torch.manual_seed(0)
    model = build_model("punet-small", latent_dim=LATENT, n_fcomb=FCOMB)
    src = SupervisedStrategy(model, patches, val, batch_size=args.batch)
    unlabeled = PatchSampler(ImageSet(patches.data.images, None, patches.data.names), args.patch)
    mt_ema = SelfTrainingStrategy(build_model("punet-small", latent_dim=LATENT, n_fcomb=FCOMB),
                                  AdaptConfig(batch_size=args.batch, patch_size=args.patch, samples=SAMPLES, teacher="ema"),
                                  unlabeled, {"x": val[0]})
    cfg = AdaptConfig(batch_size=args.batch, patch_size=args.patch, samples=SAMPLES)
    t0 = time.perf_counter()
    maps = source_maps(model, unlabeled.data.images, cfg.pseudo)
    once = time.perf_counter() - t0
    mt = SelfTrainingStrategy(build_model("punet-small", latent_dim=LATENT, n_fcomb=FCOMB), cfg, unlabeled.with_labels(maps),
                              {"x": val[0]})
    dev = torch.device("cpu")
    for s in (src, mt_ema, mt):
        s.to(dev, MEMORY_FORMAT)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = _to_tensors(src.sample_batch(np.random.default_rng(0)), dev)
    xb, yb = b["x"], b["y"]
    state: dict = {}

    def forward_parts():
        state["mu_q"] = model.posterior_params(xb, yb)
        state["mu_p"] = model.prior_params(xb)
        state["feats"] = model.features(xb)

    def loss_part():
        (mu_q, ls_q), (mu_p, ls_p) = state["mu_q"], state["mu_p"]
        z = mu_q + torch.exp(ls_q) * torch.randn_like(mu_q)
        rec = RECONSTRUCTION["dice"](model.fcomb(state["feats"], z), yb)
        state["loss"] = rec + kl_diag_gaussians(mu_q, ls_q, mu_p, ls_p).mean() + L2_WEIGHT * l2_norms(model.prior, model.posterior, model.fcomb)

    def backward():
        forward_parts()
        loss_part()
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        state["loss"].backward()
        return time.perf_counter() - t0

    def med(fn, n=args.steps) -> float:
        return 1000 * statistics.median(_timed(fn, n))

    nets = {"UNet forward": med(lambda: model.features(xb)), "prior net forward": med(lambda: model.prior_params(xb)),
            "posterior net forward": med(lambda: model.posterior_params(xb, yb))}
    rows = [("data: patch sampling, augmentation, to tensors", "source",
             med(lambda: _to_tensors(src.sample_batch(np.random.default_rng(1)), dev))),
            ("data: patch sampling, teacher + student views, to tensors", "mt-ema",
             med(lambda: _to_tensors(mt_ema.sample_batch(np.random.default_rng(1)), dev))),
            ("data: patch and label-map sampling, student view, to tensors", "mt",
             med(lambda: _to_tensors(mt.sample_batch(np.random.default_rng(1)), dev))),
            ("teacher: UNet + prior + 16 samples + consensus (no grad)", "mt-ema",
             med(lambda: pseudo_labels(mt_ema.teacher, xb, mt_ema.cfg.pseudo))),
            ("source model's labels of the 20 images (once per run) / 1000 it", "mt", 1000 * once / 1000)]
    rows += [(f"student {k}", "both", v) for k, v in nets.items()]
    forward_parts()
    rows += [("student fcomb + dice + KL + L2 forward", "both", med(loss_part)),
             ("backward (all modules)", "both", 1000 * statistics.median(backward() for _ in range(args.steps))),
             ("optimizer (Adam)", "both", med(opt.step)),
             ("EMA update", "mts", med(lambda: ema_update(mt.average, mt.model, 0.99))),
             (f"validation (8 patches) / {val_every} it", "source", med(src.validate, 3) / val_every),
             (f"validation (8 patches: deployed, student, health) / {val_every} it", "mts", med(mt.validate, 3) / val_every)]
    return rows


def print_profile(rows, args) -> None:
    from machine import describe_cpu

    print(f"\n## Where probda's step time goes: batch {args.batch}, {args.patch} px, CPU {describe_cpu(args.threads)} (median ms)\n")
    kinds = ("source", "mt-ema", "mt")
    scopes = {"source": ("source", "both"), "mt-ema": ("mt-ema", "mts", "both"), "mt": ("mt", "mts", "both")}
    print("| part | source step | Mean Teacher step, `--teacher ema` | Mean Teacher step, default (source teacher) |")
    print("|---|---|---|---|")
    for name, scope, ms in rows:
        cells = [f"{ms:.1f}" if scope in scopes[kind] else "-" for kind in kinds]
        print(f"| {name} | {' | '.join(cells)} |")
    sums = [sum(ms for _, scope, ms in rows if scope in scopes[kind]) for kind in kinds]
    print(f"| **sum** | {' | '.join(f'{v:.1f}' for v in sums)} |")


# ---------------------------------------------------------------- driver
def run_child(engine: str, args, python: str) -> dict:
    cmd = [python, __file__, "--child", engine, "--threads", str(args.threads), "--batch", str(args.batch),
           "--patch", str(args.patch), "--steps", str(args.steps)]
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{engine} child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def cli_times(args) -> dict:
    """Wall time of `probda train` and `probda adapt` for N iterations minus a 2-iteration run."""
    from probda_deploy.data.synthetic import write_dataset

    probda = str(Path(sys.executable).parent / "probda")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        src_img, src_lab = write_dataset(Path(tmp) / "src", n_images=20, shape=(256, 256), domain="source")
        # a shift a 40-iteration source model adapts to without collapsing (on dim-gradient it stops, as it should)
        tgt_img, _ = write_dataset(Path(tmp) / "tgt", n_images=20, shape=(256, 256), domain="appearance")
        common = ["--patch-size", str(args.patch), "--batch-size", str(args.batch), "-q"]

        def wall(cmd: list[str]) -> float:
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stdout[-1500:]}{res.stderr[-1500:]}")
            return time.perf_counter() - t0

        for model in PROBDA_VARIANTS:
            train = [probda, "train", "-i", str(src_img), "-l", str(src_lab), "--val-every", "20", "--model", model, *common]
            for n in (2, args.cli):
                out[f"{model} train_{n}"] = wall([*train, "-o", f"{tmp}/{model}-train{n}", "--iterations", str(n)])
            adapt = [probda, "adapt", f"{tmp}/{model}-train{args.cli}/best.pt", "--target", str(tgt_img), "--val-every", "20",
                     *common]
            for n in (2, args.cli):
                out[f"{model} adapt_{n}"] = wall([*adapt, "-o", f"{tmp}/{model}-adapt{n}", "--iterations", str(n)])
    return out


def main() -> None:
    args = parse()
    if args.child == "torch-em":
        print(json.dumps(torch_em_child(args)))
        return
    if args.child in PROBDA_VARIANTS:
        print(json.dumps(probda_child(args, args.child)))
        return
    if not (args.probda_only or args.skip_steps) and not args.torch_em:
        raise SystemExit("pass --torch-em VENV (see .ci/torch_em_crosscheck.sh) or --probda-only")
    engines = [] if args.skip_steps else ([] if args.probda_only else ["torch-em"]) + list(PROBDA_VARIANTS)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for r in range(args.rounds):
        for engine in engines:
            say(f"round {r + 1}/{args.rounds}: {engine}")
            python = str(Path(args.torch_em) / "bin" / "python") if engine == "torch-em" else sys.executable
            runs[engine].append(run_child(engine, args, python))
    if engines:
        report(runs, args)
    if args.profile:
        say("profile of probda's steps")
        print_profile(profile_breakdown(args), args)
    if args.cli:
        say(f"CLI: probda train / adapt, {args.cli} iterations")
        c = cli_times(args)
        n = args.cli - 2
        from machine import describe_cpu

        print(f"\n## The real commands, {args.batch} x {args.patch} px, {args.cli} iterations (minus a 2-iteration run), "
              f"CPU {describe_cpu()}\n")
        print(f"| command | wall, {args.cli} it | wall, 2 it | s/it (difference) |")
        print("|---|---|---|---|")
        for model in PROBDA_VARIANTS:
            for cmd in ("train", "adapt"):
                a, b = c[f"{model} {cmd}_{args.cli}"], c[f"{model} {cmd}_2"]
                print(f"| probda {cmd} ({model}) | {a:.1f} s | {b:.1f} s | {(a - b) / n:.3f} |")


def report(runs: dict, args) -> None:
    from machine import describe_cpu

    first = runs["punet-small"][0]
    print(f"\n## Step time: batch {args.batch}, {args.patch} px, CPU {describe_cpu(args.threads)}, torch {first['torch']}, "
          f"{args.rounds} rounds x {args.steps} steps (median)\n")
    print("| step | engine | s/it | speed-up vs torch-em | GFLOP/step | GFLOP/s | GFLOP/s vs torch-em |")
    print("|---|---|---|---|---|---|---|")
    rows = (("source", "source ELBO"),
            ("mt-ema", "Mean Teacher, 16 samples, masking: EMA teacher labels every batch"),
            ("mt", "Mean Teacher, 16 samples, masking: probda's default, source teacher's labels made once"))
    for kind, label in rows:
        ref = None
        for engine, engine_runs in runs.items():
            key = "mt" if engine == "torch-em" and kind.startswith("mt") else kind
            sec = statistics.median(t for run in engine_runs for t in run[key])
            gflop = engine_runs[0][f"{key}_gflop"]
            if engine == "torch-em":
                ref = (sec, gflop / sec)
            vs = (f"{ref[0] / sec:.2f}x", f"{gflop / sec / ref[1]:.2f}") if ref else ("-", "-")
            name = "torch-em 0.10.9" if engine == "torch-em" else f"probda {engine}"
            print(f"| {label} | {name} | {sec:.3f} | {vs[0]} | {gflop:.1f} | {gflop / sec:.1f} | {vs[1]} |")


if __name__ == "__main__":
    main()
