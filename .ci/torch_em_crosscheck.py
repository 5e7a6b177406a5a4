"""Cross-check `probda import` against torch-em's real ProbabilisticUNet.

Two steps, run by .ci/torch_em_crosscheck.sh in two environments:

  make OUT_DIR     (python with torch-em 0.10.9): build torch-em ProbabilisticUNets
                   with fixed seeds, save them the way torch-em's trainer saves
                   checkpoints, and save inputs, z and torch-em's outputs.
  compare OUT_DIR  (python with probda): load the checkpoints `probda import`
                   wrote and compare outputs for the same input and z (1e-5).

Exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

TOL = 1e-5
# name -> (torch-em constructor kwargs, input (H, W), with a teacher_state)
CASES = {
    "instancenorm": ({"num_filters": [8, 16, 32, 48], "latent_dim": 4}, (96, 112), True),
    "nonorm": ({"num_filters": [8, 16, 24], "latent_dim": 3, "no_convs_fcomb": 3, "norm": None}, (64, 48), False),
    "groupnorm": ({"num_filters": [8, 16, 32], "latent_dim": 6, "norm": "GroupNorm", "input_channels": 2}, (48, 64), False),
}


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


def _build(cls, kwargs: dict, seed: int):
    torch.manual_seed(seed)
    model = cls(device=torch.device("cpu"), **kwargs)
    # Perturb every parameter/buffer so biases and norms are not at their init values.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


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


def _trainer_style_checkpoint(model, teacher, cls) -> dict:
    """The dict torch-em's DefaultTrainer.save_checkpoint writes (plus teacher_state for mean teacher)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ckpt = {
        "iteration": 1234, "epoch": 7, "best_epoch": 6, "best_metric": 0.12, "current_metric": 0.13,
        "model_state": model.state_dict(), "optimizer_state": opt.state_dict(),
        "init": {
            "model_class": f"{cls.__module__}.{cls.__name__}", "model_kwargs": {},
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
    for i, (name, (kwargs, (h, w), with_teacher)) in enumerate(CASES.items()):
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
        torch.save(_trainer_style_checkpoint(student, teacher, cls), out / f"{name}.torch_em.pt")
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
        worst = max(worst, (got[key] - want).abs().max().item())
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
            print(f"  {name:13s} {which:8s} {type(model).__name__}: max |diff| = {worst:.2e} {'ok' if ok else 'FAIL'}")
    if failures:
        raise SystemExit(f"torch-em cross-check: {failures} mismatch(es) above {TOL}")
    print(f"torch-em cross-check: all outputs equal to {TOL}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "compare"):
        raise SystemExit("usage: torch_em_crosscheck.py make|compare OUT_DIR")
    (make if sys.argv[1] == "make" else compare)(Path(sys.argv[2]))
