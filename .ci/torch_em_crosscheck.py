"""Cross-check `probda import` and the whole deployment path against torch-em's real ProbabilisticUNet.

Steps, run by .ci/torch_em_crosscheck.sh in two environments:

  make OUT_DIR      (python with torch-em 0.10.9): build torch-em ProbabilisticUNets
                    with fixed seeds, save them the way torch-em's trainer saves
                    checkpoints, and save inputs, z and torch-em's outputs.
  compare OUT_DIR   (python with probda): load the checkpoints `probda import`
                    wrote and compare outputs for the same input and z (5e-5 of their scale).
  deploy OUT_DIR    (python with probda): write each case's segmentation image
                    (NAME.tif, float32) and the K latent draws `probda segment`
                    uses for it (probda_deploy.method.latent_eps).
  reference OUT_DIR (python with torch-em): torch-em's own forward() + sample()
                    on that image, sample() drawing z = mu + sigma * eps_k with
                    the same eps: K sigmoid maps per case.
  check OUT_DIR     (python with probda): the TIFFs `probda segment` wrote (with
                    torch blocked) equal torch-em's mean probability, std and
                    consensus within 1e-4.

Exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

# Import check: max |diff| / max(1, max |torch-em output|). probda's InstanceNorm/GroupNorm sum
# axis by axis (precise in onnxruntime), torch-em's in one pass: float32 round-off of ~1e-5.
TOL = 5e-5
SEGMENT_TOL = 1e-4
SEED, K = 0, 8  # `probda segment --seed 0 -k 8`
HIGH, LOW = 0.9, 0.1  # consensus thresholds (probda's defaults)
# name -> (torch-em constructor kwargs, import-check input (H, W), with a teacher_state,
#          segmentation image (H, W) or None: not deployable, e.g. 2 input channels)
CASES = {
    "instancenorm": ({"num_filters": [8, 16, 32, 48], "latent_dim": 4}, (96, 112), True, (128, 144)),
    "nonorm": ({"num_filters": [8, 16, 24], "latent_dim": 3, "no_convs_fcomb": 3, "norm": None}, (64, 48), False, (64, 48)),
    "groupnorm": ({"num_filters": [8, 16, 32], "latent_dim": 6, "norm": "GroupNorm"}, (48, 64), False, (64, 80)),
    "groupnorm2ch": ({"num_filters": [8, 16, 32], "latent_dim": 6, "norm": "GroupNorm", "input_channels": 2}, (48, 64), False, None),
    "trackstats": ({"num_filters": [8, 16], "latent_dim": 5, "norm": "InstanceNormTrackStats"}, (32, 40), False, (48, 40)),
    "batchnorm5": ({"num_filters": [4, 8, 8, 16, 16], "latent_dim": 6, "norm": "BatchNorm"}, (192, 224), False, (192, 224)),
}


def deployable(name: str) -> list[tuple[str, str]]:
    """(weights, probda checkpoint file) that go through export/segment/zoo for a case."""
    kwargs, _, with_teacher, seg = CASES[name]
    if seg is None:
        return []
    if with_teacher:
        return [("teacher", f"{name}.probda.pt"), ("student", f"{name}.student.probda.pt")]
    return [("student", f"{name}.probda.pt")]


def _import_torch_em():
    """torch-em's ProbabilisticUNet class and how it was imported.

    `import torch_em` pulls in its trainers (torchvision, kornia, ...). Where
    those are not installed, the model modules are loaded from the installed
    torch-em files without running the package __init__ files: the model code
    is torch-em's own either way.
    """
    try:
        from torch_em.model.probabilistic_unet import ProbabilisticUNet

        return ProbabilisticUNet, "full import"
    except ImportError:
        pass
    import importlib
    import importlib.util
    import types

    for name in [m for m in sys.modules if m == "torch_em" or m.startswith("torch_em.")]:
        del sys.modules[name]
    root = Path(importlib.util.find_spec("torch_em").submodule_search_locations[0])
    for name in ("torch_em", "torch_em.model", "torch_em.loss"):
        mod = types.ModuleType(name)
        mod.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = mod
    unet = importlib.import_module("torch_em.model.unet")
    sys.modules["torch_em.model"].UNet2d = unet.UNet2d
    pu = importlib.import_module("torch_em.model.probabilistic_unet")
    return pu.ProbabilisticUNet, "model modules only (trainer deps absent)"


def perturb(model):
    """Move every parameter/buffer off its init value; scale fcomb's last layer so some samples are
    confident, as a trained model's are (bioimage.io refuses an all-zero consensus test)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.1)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
        model.fcomb.last_layer.weight.mul_(20.0)
    return model.eval()


def _build(cls, kwargs: dict, seed: int):
    torch.manual_seed(seed)
    return perturb(cls(device=torch.device("cpu"), **kwargs))


def _reference_outputs(model, x, segm, z, eps) -> dict:
    with torch.no_grad():
        model(x, segm)
        prior, post = model.prior_latent_space.base_dist, model.posterior_latent_space.base_dist
        feats = model.unet_features
        logits = model.fcomb(feats, z)
        zk = prior.loc[None] + prior.scale[None] * eps
        samples = torch.stack([model.fcomb(feats, zk[k]) for k in range(eps.shape[0])])
    return {
        "logits": logits, "samples": samples, "prior_mu": prior.loc, "prior_sigma": prior.scale,
        "post_mu": post.loc, "post_sigma": post.scale,
    }


def _trainer_style_checkpoint(model, teacher, cls, kwargs: dict) -> dict:
    """The dict torch-em's DefaultTrainer.save_checkpoint writes (plus teacher_state for mean teacher)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ckpt = {
        "iteration": 1234, "epoch": 7, "best_epoch": 6, "best_metric": 0.12, "current_metric": 0.13,
        "model_state": model.state_dict(), "optimizer_state": opt.state_dict(),
        "init": {
            "model_class": f"{cls.__module__}.{cls.__name__}", "model_kwargs": dict(kwargs),
            # torch-em pickles the datasets themselves into `init`:
            "train_dataset": torch.utils.data.TensorDataset(torch.zeros(2, 1, 8, 8)),
            "device": "cpu",
        },
        "train_time": 1.0, "timestamp": "01-01-2026 (00:00:00)",
    }
    if teacher is not None:
        ckpt["teacher_state"] = teacher.state_dict()
    return ckpt


def make(out: Path) -> None:
    from importlib.metadata import version

    cls, how = _import_torch_em()
    print(f"torch-em {version('torch-em')} ({how}), torch {torch.__version__}")
    out.mkdir(parents=True, exist_ok=True)
    for i, (name, (kwargs, (h, w), with_teacher, _)) in enumerate(CASES.items()):
        student = _build(cls, kwargs, seed=10 * i)
        teacher = _build(cls, kwargs, seed=10 * i + 1) if with_teacher else None
        gen = torch.Generator().manual_seed(100 + i)
        cin, lat = kwargs.get("input_channels", 1), kwargs.get("latent_dim", 6)
        x = torch.randn(2, cin, h, w, generator=gen)
        segm = (torch.rand(2, 1, h, w, generator=gen) > 0.5).float()
        z = torch.randn(2, lat, generator=gen)
        eps = torch.randn(3, 2, lat, generator=gen)
        data = {"x": x, "segm": segm, "z": z, "eps": eps}
        data["student"] = _reference_outputs(student, x, segm, z, eps)
        if teacher is not None:
            data["teacher"] = _reference_outputs(teacher, x, segm, z, eps)
        torch.save(_trainer_style_checkpoint(student, teacher, cls, kwargs), out / f"{name}.torch_em.pt")
        torch.save(data, out / f"{name}.expected.pt")
        print(f"  {name}: {kwargs} input {h}x{w}{' + teacher' if with_teacher else ''}")


def _compare_one(model, data: dict, ref: dict) -> float:
    from probda_deploy.models.blocks import pad_to_multiple

    x, segm = data["x"], data["segm"]
    with torch.no_grad():
        xp, _ = pad_to_multiple(x, model.config.size_multiple)
        got = {
            "logits": model(x, data["z"]),
            "samples": model.sample_logits(x, eps=data["eps"]),
        }
        got["prior_mu"], ls = model.prior_params(xp)
        got["prior_sigma"] = torch.exp(ls)
        got["post_mu"], ls = model.posterior_params(x, segm)
        got["post_sigma"] = torch.exp(ls)
    worst = 0.0
    for key, want in ref.items():
        if got[key].shape != want.shape:
            raise SystemExit(f"FAIL {key}: shape {tuple(got[key].shape)} != torch-em {tuple(want.shape)}")
        # relative to the output's scale (>= 1): the fixture scales fcomb's last layer by 20
        worst = max(worst, (got[key] - want).abs().max().item() / max(1.0, want.abs().max().item()))
    return worst


def compare(out: Path) -> None:
    from probda_deploy.models.checkpoint import model_from_checkpoint

    failures = 0
    for name in CASES:
        data = torch.load(out / f"{name}.expected.pt", weights_only=True)
        runs = [("teacher", f"{name}.probda.pt")] if "teacher" in data else []
        runs.append(("student", f"{name}.student.probda.pt" if runs else f"{name}.probda.pt"))
        for which, fname in runs:
            model = model_from_checkpoint(out / fname)
            worst = _compare_one(model, data, data[which])
            ok = worst <= TOL
            failures += not ok
            print(f"  {name:13s} {which:8s} {type(model).__name__}: max |diff| / max(1, |torch-em|) = {worst:.2e} {'ok' if ok else 'FAIL'}")
    if failures:
        raise SystemExit(f"torch-em cross-check: {failures} mismatch(es) above {TOL}")
    print(f"torch-em cross-check: all outputs equal to {TOL}")


def deploy(out: Path) -> None:
    """Segmentation images (float32 TIFF) and the latent draws `probda segment` makes for them."""
    import numpy as np
    import tifffile

    from probda_deploy.method import latent_eps

    for i, (name, (kwargs, _, _, seg)) in enumerate(CASES.items()):
        if seg is None:
            continue
        rng = np.random.default_rng(1000 + i)
        h, w = seg
        yy, xx = np.mgrid[0:h, 0:w]
        image = (np.sin(yy / 7.0) * np.cos(xx / 9.0) + 0.5 * rng.standard_normal((h, w))).astype(np.float32)
        tifffile.imwrite(out / f"{name}.tif", image)
        eps = latent_eps(SEED, f"{name}.tif", K, kwargs.get("latent_dim", 6))
        torch.save({"image": torch.from_numpy(image), "eps": torch.from_numpy(eps)}, out / f"{name}.segment_input.pt")


def reference(out: Path) -> None:
    """torch-em's forward() + sample() on each segmentation image, sample() drawing z = mu + sigma * eps_k."""
    cls, _ = _import_torch_em()
    for name in CASES:
        runs = deployable(name)
        if not runs:
            continue
        data = torch.load(out / f"{name}.segment_input.pt", weights_only=True)
        ckpt = torch.load(out / f"{name}.torch_em.pt", weights_only=False)  # written by `make` above
        refs = {}
        for which, _ in runs:
            model = cls(device=torch.device("cpu"), **CASES[name][0])
            model.load_state_dict(ckpt["teacher_state" if which == "teacher" else "model_state"])
            model.eval()
            with torch.no_grad():
                model(data["image"][None, None])
                dist = model.prior_latent_space
                probs = []
                for eps in data["eps"]:
                    z = dist.base_dist.loc + dist.base_dist.scale * eps[None]
                    dist.sample = lambda sample_shape=torch.Size(), z=z: z  # torch-em's sample() draws this z
                    probs.append(torch.sigmoid(model.sample())[0, 0])
            refs[which] = torch.stack(probs)  # (K, H, W)
        torch.save(refs, out / f"{name}.reference.pt")
        print(f"  {name}: torch-em forward + {data['eps'].shape[0]} x sample() on {tuple(data['image'].shape)}")


def _maps(probs):
    """mean, population std and 'agree' consensus of (K, H, W) sample probabilities, and pixels near a threshold."""
    import numpy as np

    mean = probs.mean(0)
    std = np.sqrt(((probs - mean) ** 2).mean(0))
    fg = mean >= 0.5
    consensus = np.where(fg, probs >= HIGH, probs <= LOW).mean(0)
    near = (np.abs(probs - HIGH) < SEGMENT_TOL).any(0) | (np.abs(probs - LOW) < SEGMENT_TOL).any(0) | (np.abs(mean - 0.5) < SEGMENT_TOL)
    return {"prob": mean, "std": std, "consensus": consensus}, near


def check(out: Path) -> None:
    """`probda segment` outputs (torch blocked) against torch-em's forward + sample()."""
    import numpy as np
    import tifffile

    failures = 0
    for name in CASES:
        runs = deployable(name)
        if not runs:
            continue
        refs = torch.load(out / f"{name}.reference.pt", weights_only=True)
        for which, _ in runs:
            want, near = _maps(refs[which].double().numpy())
            seg_dir = out / f"seg-{name}-{which}"
            worst, flips = 0.0, 0
            for key in ("prob", "std", "consensus"):
                got = tifffile.imread(seg_dir / f"{name}_{key}.tif").astype(np.float64)
                diff = np.abs(got - want[key])
                if key == "consensus":
                    flips = int((diff[~near] > SEGMENT_TOL).sum())
                else:
                    worst = max(worst, float(diff.max()))
            ok = worst <= SEGMENT_TOL and flips == 0
            failures += not ok
            print(f"  {name:13s} {which:8s} segment vs torch-em sample(): max |diff| prob/std = {worst:.2e}, "
                  f"consensus mismatches = {flips} {'ok' if ok else 'FAIL'}")
    if failures:
        raise SystemExit(f"torch-em cross-check: {failures} segmentation(s) differ from torch-em by more than {SEGMENT_TOL}")
    print(f"torch-em cross-check: probda segment equals torch-em forward + sample() to {SEGMENT_TOL}")


def plan(out: Path) -> None:
    """Print `NAME WEIGHTS CHECKPOINT` per deployable run, for the shell script."""
    for name in CASES:
        for which, fname in deployable(name):
            print(name, which, fname)


STEPS = {"plan": plan, "make": make, "compare": compare, "deploy": deploy, "reference": reference, "check": check}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in STEPS:
        raise SystemExit(f"usage: torch_em_crosscheck.py {'|'.join(STEPS)} OUT_DIR")
    STEPS[sys.argv[1]](Path(sys.argv[2]))
