"""torch-em 0.10.9's own PUNet FixMatch on probda's synthetic benchmark data (reference run, not probda code).

Runs with the torch-em venv's python, not probda's:

    ~/.cache/probda-ci/torch-em-0.10.9-full-torch-2.14.1/bin/python benchmarks/torch_em_fixmatch.py \
        --root /tmp/fm_bench --seeds 0 --shifts dim-gradient target-gradient --out /tmp/tefm/runs \
        [--iterations 1000] [--lr 1e-5 3e-4] [--eval-every 100] [--labeler fixed|shipped] [--no-alignment]
        [--source-iterations 200]

Per seed: a torch-em ProbabilisticUNet trained on the 12 source images with torch-em's
ProbabilisticUNetTrainer (ELBO via ProbabilisticUNetLoss, 200 it, batch 4, 96 px patches, flips,
Adam 1e-3). Per shift and lr: torch-em's FixMatchTrainer, unsupervised only, ProbabilisticPseudoLabeler
(sigmoid, confidence 0.9, 16 prior samples, consensus masking; by default with the per-sample consensus
fix, see PerSamplePseudoLabeler), ProbabilisticUNetLoss, distribution
alignment to the source labels' [bg, fg] fractions, the paper scripts' weak/strong views
(torch_em.transform.raw GaussianBlur / AdditiveGaussianNoise / RandomContrast, get_raw_transform).
Evaluation: mean of 16 sigmoid prior samples of the whole (per-image standardised) test image,
threshold 0.5, dice per image averaged. Results: printed table and --out/results.json.

Seeds 1 and 2 data are written with probda's own generator (probda's venv) if missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torchvision import transforms

import torch_em
from torch_em.model import ProbabilisticUNet
from torch_em.self_training import (FixMatchTrainer, ProbabilisticPseudoLabeler, ProbabilisticUNetLoss,
                                    ProbabilisticUNetLossAndMetric)
from torch_em.self_training.probabilistic_unet_trainer import ProbabilisticUNetTrainer
from torch_em.transform.raw import AdditiveGaussianNoise, GaussianBlur, RandomContrast, get_raw_transform

REPO = Path(__file__).resolve().parents[1]
PROBDA_PY = str(REPO / ".venv/bin/python")  # writes missing seeds' data with probda's generator
PATCH, BATCH = 96, 4
SOURCE_IT, SOURCE_LR = 200, 1e-3
# probda punet-small: filters 16/32/64/128, latent 6, 3 fcomb convs, beta 1, 3 convs per prior block, no norm.
MODEL_KW = dict(input_channels=1, output_channels=1, num_filters=[16, 32, 64, 128], latent_dim=6,
                no_convs_per_block=3, no_convs_fcomb=3, norm=None, beta=1.0, device=torch.device("cpu"))


# ---------------------------------------------------------------- data

def ensure_data(root: Path, seed: int, shifts: list[str]) -> None:
    """Write the seed's data with probda's generator (probda's venv) where missing."""
    base = root / f"seed{seed}"
    jobs = [(base / "source", 12, "source", seed)]
    for s in shifts:
        jobs += [(base / s / "target", 12, s, seed), (base / s / "test", 6, s, seed + 100)]
    todo = [j for j in jobs if not (j[0] / "images").is_dir()]
    if not todo:
        return
    code = "from probda_deploy.data.synthetic import write_dataset\n" + "".join(
        f"write_dataset({str(d)!r}, n_images={n}, shape=(192, 192), domain={dom!r}, seed={sd})\n" for d, n, dom, sd in todo)
    print(f"writing data with probda's generator: {[str(j[0]) for j in todo]}", flush=True)
    subprocess.run([PROBDA_PY, "-c", code], check=True, cwd=REPO)


def standardize(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    return (img - img.mean()) / (img.std() + 1e-7)


def load_folder(folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-image standardised images and binary (label != 0) masks."""
    names = sorted((folder / "images").glob("img_*.tif"))
    imgs = [standardize(tifffile.imread(p)) for p in names]
    labs = [(tifffile.imread(folder / "labels" / p.name) != 0).astype(np.float32) for p in names]
    return imgs, labs


def random_patch(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    h, w = arrays[0].shape
    y, x = rng.integers(0, h - PATCH + 1), rng.integers(0, w - PATCH + 1)
    out = [a[y:y + PATCH, x:x + PATCH] for a in arrays]
    if rng.random() < 0.5:
        out = [a[::-1] for a in out]
    if rng.random() < 0.5:
        out = [a[:, ::-1] for a in out]
    return [np.ascontiguousarray(a) for a in out]


class SourcePatches(torch.utils.data.Dataset):
    """Random flipped 96 px patches of the source images -> (x (1,H,W), y (1,H,W)); `n` samples per epoch."""

    def __init__(self, imgs, labs, n, seed):
        self.imgs, self.labs, self.n = imgs, labs, n
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return self.n

    def __getitem__(self, _):
        i = self.rng.integers(len(self.imgs))
        x, y = random_patch(self.rng, self.imgs[i], self.labs[i])
        return torch.from_numpy(x)[None], torch.from_numpy(y)[None]


# The paper's views (Probabilistic-Domain-Adaptation LIVECell/livecell_fm.py, my_weak_augmentations /
# my_strong_augmentations): torch-em 0.10.9 has no weak/strong library (self_training/augmentations.py is a TODO).
def standardize_torch(t: torch.Tensor) -> torch.Tensor:  # = prob_utils my_standardize_torch (per patch)
    t = t - t.mean()
    return t / (t.std() + 1e-7)


def weak_view(p=0.25):
    aug1 = transforms.Compose([
        standardize_torch,
        transforms.RandomApply([GaussianBlur()], p=p),
        transforms.RandomApply([AdditiveGaussianNoise(scale=(0, 0.15), clip_kwargs=False)], p=p),
    ])
    return get_raw_transform(normalizer=standardize_torch, augmentation1=aug1)


def strong_view(p=0.9):
    aug1 = transforms.Compose([
        standardize_torch,
        transforms.RandomApply([GaussianBlur(sigma=(1.0, 4.0))], p=p),
        transforms.RandomApply([AdditiveGaussianNoise(scale=(0.1, 0.35), clip_kwargs=False)], p=p),
        transforms.RandomApply([RandomContrast(alpha=(0.33, 3), mean=0.0, clip_kwargs=False)], p=p),
    ])
    return get_raw_transform(normalizer=standardize_torch, augmentation1=aug1)


class TargetViews(torch.utils.data.Dataset):
    """Random flipped 96 px patches of the target train images -> (weak view, strong view), each (1,H,W).

    As the paper's DualImageCollectionDataset: one patch, one spatial augmentation, then the weak and the
    strong intensity transform on two copies. The torch-em transforms draw from np.random (seeded in main).
    """

    def __init__(self, imgs, n, seed):
        self.imgs, self.n = imgs, n
        self.rng = np.random.default_rng(seed)
        self.weak, self.strong = weak_view(), strong_view()

    def __len__(self):
        return self.n

    def __getitem__(self, _):
        (x,) = random_patch(self.rng, self.imgs[self.rng.integers(len(self.imgs))])
        x = torch.from_numpy(x)[None]
        return (torch.as_tensor(self.weak(x.clone()), dtype=torch.float32),
                torch.as_tensor(self.strong(x.clone()), dtype=torch.float32))


def fixed_batches(ds, n_batches):
    """A list of pre-drawn batches (a re-iterable val "loader" of fixed content)."""
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        *[torch.stack(t) for t in zip(*[ds[0] for _ in range(n_batches * BATCH)])]), batch_size=BATCH)


# ---------------------------------------------------------------- model / evaluation

def make_model(**flags) -> ProbabilisticUNet:
    return ProbabilisticUNet(**MODEL_KW, **flags)


@torch.no_grad()
def predict(model: ProbabilisticUNet, img: np.ndarray, k: int = 16) -> np.ndarray:
    """Mean of k sigmoid prior samples of the whole image (reflect-padded to a multiple of 2**depth)."""
    m = 2 ** len(model.num_filters)
    h, w = img.shape
    x = torch.from_numpy(img)[None, None]
    x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
    model.eval()
    model(x)
    prob = torch.stack([torch.sigmoid(model.sample()) for _ in range(k)]).mean(0)
    return prob[0, 0, :h, :w].numpy()


def evaluate(model, imgs, labs) -> dict:
    """Dice of prob >= 0.5 per image (mean), and the mean predicted foreground fraction. Fixed RNG, restored after."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        dice, fg = [], []
        for img, lab in zip(imgs, labs):
            pred = predict(model, img) >= 0.5
            gt = lab > 0
            denom = pred.sum() + gt.sum()
            dice.append(2 * np.logical_and(pred, gt).sum() / denom if denom else 1.0)
            fg.append(pred.mean())
    return {"dice": float(np.mean(dice)), "fg": float(np.mean(fg))}


class PerSamplePseudoLabeler(ProbabilisticPseudoLabeler):
    """torch-em's ProbabilisticPseudoLabeler with the consensus computed over the prior samples.

    0.10.9 thresholds the *mean* and then sums over the *batch* axis (`for sample in pseudo_labels`
    iterates the batch), giving a (1, H, W) mask <= B/prior_samples that never equals 1 and that
    ProbabilisticUNet.elbo rejects by shape. This does what the paper's FixMatchTrainer
    (prob_utils sample_from_weak_model) and the docstring describe: per pixel, the fraction of the
    16 samples that are >= 0.9 or <= 0.1; consensus masking keeps pixels where all of them are.
    """

    def __call__(self, teacher, input_):
        teacher.forward(input_)
        samples = torch.stack([self.activation(teacher.sample()) for _ in range(self.prior_samples)])
        pseudo_labels = samples.mean(0)
        hi, lo = self.confidence_threshold, 1.0 - self.confidence_threshold
        label_mask = ((samples >= hi) | (samples <= lo)).float().mean(0)
        if self.consensus_masking:
            label_mask = (label_mask == 1).float()
        return pseudo_labels, label_mask


# ---------------------------------------------------------------- runs

def train_source(seed, src, out: Path, iterations: int = SOURCE_IT) -> Path:
    ckpt = out / f"seed{seed}" / "source_model.pt"
    if ckpt.exists():
        return ckpt
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = make_model(rl_swap=True)  # the paper's source PUNets use rl_swap=True (dice reconstruction)
    train = torch.utils.data.DataLoader(SourcePatches(*src, n=iterations * BATCH, seed=seed), batch_size=BATCH)
    val = fixed_batches(SourcePatches(*src, n=1, seed=seed + 1000), 1)
    kwargs = dict(name="source", save_root=str(out / f"seed{seed}" / "torch_em"), train_loader=train,
                  val_loader=val, model=model, optimizer=torch.optim.Adam(model.parameters(), lr=SOURCE_LR),
                  device="cpu", logger=None, mixed_precision=False, compile_model=False)
    trainer = ProbabilisticUNetTrainer(loss=ProbabilisticUNetLoss(), loss_and_metric=ProbabilisticUNetLossAndMetric(),
                                       **kwargs)
    # 0.10.9's ProbabilisticUNetTrainer does not keep its **kwargs, and DefaultTrainer.fit -> _build_init raises
    # "missing the _kwargs attribute"; set it as FixMatchTrainer does (only used to serialise checkpoints).
    trainer._kwargs = kwargs
    trainer.fit(iterations=iterations)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ckpt)
    return ckpt


def run_fixmatch(seed, shift, lr, iterations, eval_every, src_ckpt, src_dist, target, test, out: Path, labeler: str):
    torch.manual_seed(seed)
    np.random.seed(seed)
    # rl_swap=True and consensus_masking=True: the paper's PUNet FixMatch (masking) configuration;
    # without consensus_masking=True on the model, elbo() ignores the label filter.
    model = make_model(rl_swap=True, consensus_masking=True)
    model.load_state_dict(torch.load(src_ckpt, map_location="cpu"))
    chunk = min(eval_every, iterations)
    train = torch.utils.data.DataLoader(TargetViews(target, n=chunk * BATCH, seed=seed), batch_size=BATCH)
    val = fixed_batches(TargetViews(target, n=1, seed=seed + 1000), 1)
    cls = PerSamplePseudoLabeler if labeler == "fixed" else ProbabilisticPseudoLabeler
    pseudo = cls(activation=torch.nn.Sigmoid(), confidence_threshold=0.9, prior_samples=16, consensus_masking=True)
    trainer = FixMatchTrainer(
        name=f"fixmatch_{shift}_lr{lr:g}_it{iterations}" + ("" if src_dist is not None else "_noalign"), save_root=str(out / f"seed{seed}" / "torch_em"), model=model,
        unsupervised_train_loader=train, unsupervised_val_loader=val, unsupervised_loss=ProbabilisticUNetLoss(),
        unsupervised_loss_and_metric=ProbabilisticUNetLossAndMetric(), pseudo_labeler=pseudo,
        source_distribution=src_dist, optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        device="cpu", logger=None, mixed_precision=False, compile_model=False)
    curve, t0, done = [], time.perf_counter(), 0
    while done < iterations:
        step = min(chunk, iterations - done)
        trainer.fit(iterations=step)  # continues the same trainer/optimizer; one epoch = `chunk` iterations
        done += step
        curve.append({"iteration": done, **evaluate(model, *test), "seconds": time.perf_counter() - t0})
        print(f"    it {done}: dice {curve[-1]['dice']:.3f}, fg {curve[-1]['fg']:.3f}, {curve[-1]['seconds']:.0f}s", flush=True)
    return curve, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/fm_bench"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--shifts", nargs="+", default=["dim-gradient", "target-gradient"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/tefm/runs"))
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-5, 3e-4], help="FixMatch learning rates (paper 1e-5, probda 3e-4)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--no-alignment", action="store_true", help="source_distribution=None (no distribution alignment)")
    ap.add_argument("--source-iterations", type=int, default=SOURCE_IT, help="smoke tests only; the benchmark uses 200")
    ap.add_argument("--labeler", choices=["fixed", "shipped"], default="fixed",
                    help="fixed: per-sample consensus (see PerSamplePseudoLabeler); shipped: torch-em 0.10.9 as is")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, torch-em {torch_em.__version__}", flush=True)
    rows, t_all = [], time.perf_counter()
    res_path = args.out / "results.json"
    if res_path.exists():  # resume: keep finished runs of the same labeler and length
        prev = json.loads(res_path.read_text())
        if prev.get("labeler") == args.labeler:
            rows = prev["rows"]
    finished = {(r["seed"], r["shift"], r["lr"], r["iterations"], r.get("alignment", True)) for r in rows}
    for seed in args.seeds:
        ensure_data(args.root, seed, args.shifts)
        base = args.root / f"seed{seed}"
        src = load_folder(base / "source")
        fg_src = float(np.mean(np.concatenate([lab.ravel() for lab in src[1]])))
        src_dist = [1.0 - fg_src, fg_src]
        t = time.perf_counter()
        src_ckpt = train_source(seed, src, args.out, args.source_iterations)
        print(f"seed {seed}: source model {src_ckpt} ({time.perf_counter() - t:.0f}s), source [bg, fg] = "
              f"[{src_dist[0]:.3f}, {src_dist[1]:.3f}]", flush=True)
        source_model = make_model(rl_swap=True)
        source_model.load_state_dict(torch.load(src_ckpt, map_location="cpu"))
        for shift in args.shifts:
            target, _ = load_folder(base / shift / "target")  # labels never used
            test = load_folder(base / shift / "test")
            src_eval = evaluate(source_model, *test)
            print(f"seed {seed} {shift}: source dice {src_eval['dice']:.3f}, fg {src_eval['fg']:.3f}", flush=True)
            for lr in args.lr:
                if (seed, shift, lr, args.iterations, not args.no_alignment) in finished:
                    print(f"  FixMatch lr {lr:g}: done before ({res_path})", flush=True)
                    continue
                print(f"  FixMatch lr {lr:g}{', no alignment' if args.no_alignment else ''}", flush=True)
                curve, secs = run_fixmatch(seed, shift, lr, args.iterations, args.eval_every, src_ckpt,
                                           None if args.no_alignment else src_dist,
                                           target, test, args.out, args.labeler)
                end = curve[-1]
                fg_ratio = end["fg"] / max(src_eval["fg"], 1e-9)
                bg_ratio = (1 - end["fg"]) / max(1 - src_eval["fg"], 1e-9)
                rows.append({"seed": seed, "shift": shift, "lr": lr, "iterations": args.iterations,
                             "alignment": not args.no_alignment,
                             "source_dice": src_eval["dice"], "source_fg": src_eval["fg"],
                             "fixmatch_dice": end["dice"], "fixmatch_fg": end["fg"],
                             "fg_ratio": fg_ratio, "bg_ratio": bg_ratio,
                             "collapsed": bool(fg_ratio < 0.1 or bg_ratio < 0.1), "seconds": secs, "curve": curve})
                res_path.write_text(json.dumps(
                    {"labeler": args.labeler, "source_distribution_from": "source labels", "rows": rows}, indent=1))
    print("\n| seed | shift | source dice | lr | alignment | iterations | FixMatch dice | fg ratio to source | collapsed | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['shift']} | {r['source_dice']:.3f} | {r['lr']:g} | {'on' if r.get('alignment', True) else 'off'} | "
              f"{r['iterations']} | {r['fixmatch_dice']:.3f} | {r['fg_ratio']:.2f} | {'yes' if r['collapsed'] else 'no'} | "
              f"{r['seconds']:.0f} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s this invocation, {sum(r['seconds'] for r in rows):.0f}s of FixMatch "
          f"runs in the table; results in {res_path}")


if __name__ == "__main__":
    main()
