"""`probda import`: reference-code and torch-em checkpoints -> probda checkpoints, same outputs."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probda_deploy.errors import CheckpointError
from probda_deploy.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from probda_deploy.models.importer import import_checkpoint
from probda_deploy.models.torch_em_unet import TorchEmPUNet, TorchEmPUNetConfig

REPO = Path(__file__).resolve().parents[2]
TOL = 1e-5  # imported model against a re-implementation: the same sums in another order (float32 re-association)


# ---- an independent re-implementation of the reference module structure -----
# (prob_utils/my_models: DownConvBlock/UpConvBlock/Unet/Encoder/AxisAlignedConvGaussian/Fcomb)


def _convs(cin: int, cout: int, n: int, pool: bool) -> nn.Sequential:
    mods: list[nn.Module] = [nn.AvgPool2d(2, 2, ceil_mode=True)] if pool else []
    for i in range(n):
        mods += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*mods)


class _Down(nn.Module):
    def __init__(self, cin, cout, pool):
        super().__init__()
        self.layers = _convs(cin, cout, 3, pool)

    def forward(self, x):
        return self.layers(x)


class _Up(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_block = _Down(cin, cout, False)

    def forward(self, x, bridge):
        up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv_block(torch.cat([up, bridge], 1))


class _RefUnet(nn.Module):
    def __init__(self, cin, nf):
        super().__init__()
        self.contracting_path = nn.ModuleList(_Down(cin if i == 0 else nf[i - 1], f, i > 0) for i, f in enumerate(nf))
        self.upsampling_path = nn.ModuleList(_Up(nf[i + 1] + nf[i], nf[i]) for i in reversed(range(len(nf) - 1)))

    def forward(self, x):
        skips = []
        for i, down in enumerate(self.contracting_path):
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.upsampling_path:
            x = up(x, skips.pop())
        return x


class _RefEncoder(nn.Module):
    def __init__(self, cin, nf):
        super().__init__()
        self.layers = nn.Sequential(*[m for i, f in enumerate(nf) for m in _convs(cin if i == 0 else nf[i - 1], f, 3, i > 0)])


class _RefGaussian(nn.Module):
    def __init__(self, cin, nf, latent):
        super().__init__()
        self.latent = latent
        self.encoder = _RefEncoder(cin, nf)
        self.conv_layer = nn.Conv2d(nf[-1], 2 * latent, 1)

    def forward(self, x):
        out = self.conv_layer(self.encoder.layers(x).mean(dim=(2, 3), keepdim=True))[:, :, 0, 0]
        return out[:, : self.latent], out[:, self.latent :]


class _RefFcomb(nn.Module):
    def __init__(self, c, latent, classes, n):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(c + latent, c, 1), nn.ReLU()]
        for _ in range(n - 2):
            mods += [nn.Conv2d(c, c, 1), nn.ReLU()]
        self.layers = nn.Sequential(*mods)
        self.last_layer = nn.Conv2d(c, classes, 1)

    def forward(self, feats, z):
        zz = z[:, :, None, None].repeat(1, 1, *feats.shape[2:])
        return self.last_layer(self.layers(torch.cat([feats, zz], 1)))


class _RefPUNet(nn.Module):
    def __init__(self, cin=1, classes=1, nf=(8, 16, 24), latent=3, n_fcomb=4):
        super().__init__()
        self.unet = _RefUnet(cin, nf)
        self.prior = _RefGaussian(cin, nf, latent)
        self.posterior = _RefGaussian(cin + classes, nf, latent)
        self.fcomb = _RefFcomb(nf[0], latent, classes, n_fcomb)


def _ref_model(seed: int, **kw) -> _RefPUNet:
    torch.manual_seed(seed)
    model = _RefPUNet(**kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


class _Evil:
    """Pickles to a call of os.system: must never run when importing."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# ---- reference layout --------------------------------------------------------


def test_reference_checkpoint_same_outputs_for_same_z(tmp_path):
    student, teacher = _ref_model(0), _ref_model(1)
    marker = tmp_path / "pwned"
    src = _save({
        "model_state": student.state_dict(), "teacher_state": teacher.state_dict(), "iteration": 321,
        "init": {"model_class": "prob_utils.my_models.ProbabilisticUnet", "model_kwargs": {"beta": 10.0},
                 "train_dataset": torch.utils.data.TensorDataset(torch.zeros(1)), "hook": _Evil(marker)},
    }, tmp_path / "ref.pt")
    result = import_checkpoint(src)
    assert not marker.exists()  # the pickled os.system call was not executed
    assert (result.layout, result.state_used, result.load_mode) == ("reference", "teacher_state", "inert")
    cfg = result.config
    assert cfg["num_filters"] == (8, 16, 24) and cfg["latent_dim"] == 3 and cfg["n_fcomb"] == 4
    assert cfg["align_corners"] is True and cfg["beta"] == 10.0 and result.source_iteration == 321
    save_checkpoint(result.checkpoint, tmp_path / "out.pt")
    model = model_from_checkpoint(tmp_path / "out.pt")
    assert load_checkpoint(tmp_path / "out.pt")["provenance"]["imported_from"]["layout"] == "reference"

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 1, 32, 40, generator=gen), (torch.rand(2, 1, 32, 40, generator=gen) > 0.5).float()
    z, eps = torch.randn(2, 3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    with torch.no_grad():
        feats = teacher.unet(x)
        mu, ls = teacher.prior(x)
        torch.testing.assert_close(model(x, z), teacher.fcomb(feats, z), atol=TOL, rtol=TOL)
        want = torch.stack([teacher.fcomb(feats, mu + ls.exp() * e) for e in eps])
        torch.testing.assert_close(model.sample_logits(x, eps=eps), want, atol=TOL, rtol=TOL)
        for got, ref in zip(model.prior_params(x), (mu, ls)):
            torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL)
        for got, ref in zip(model.posterior_params(x, y), teacher.posterior(torch.cat([x, y], 1))):
            torch.testing.assert_close(got, ref, atol=TOL, rtol=TOL)

    student_model = model_from_checkpoint(import_checkpoint(src, teacher=False).checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(student_model(x, z), student.fcomb(student.unet(x), z), atol=TOL, rtol=TOL)


def test_reference_equal_consecutive_filters(tmp_path):
    ref = _ref_model(4, nf=(8, 8, 16))
    result = import_checkpoint(_save({"model_state": ref.state_dict()}, tmp_path / "r.pt"))
    assert result.config["num_filters"] == (8, 8, 16)
    x, z = torch.randn(1, 1, 16, 24), torch.randn(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(model_from_checkpoint(result.checkpoint)(x, z), ref.fcomb(ref.unet(x), z), atol=TOL, rtol=TOL)


def test_bare_state_dict_doubling_filters_loads_weights_only(tmp_path):
    ref = _ref_model(2, nf=(8, 16, 32), latent=6, n_fcomb=3)
    result = import_checkpoint(_save(ref.state_dict(), tmp_path / "bare.pt"))
    assert (result.load_mode, result.state_used) == ("weights_only", "state_dict")
    assert result.config["num_filters"] is None and result.config["initial_features"] == 8
    assert result.config["depth"] == 3 and result.config["n_fcomb"] == 3
    with pytest.raises(CheckpointError, match="no teacher"):
        import_checkpoint(tmp_path / "bare.pt", teacher=True)


@pytest.mark.parametrize(
    "obj, match",
    [
        ({"weights": 1}, "no `model_state`"),
        ({"model_state": {"foo.weight": torch.zeros(2)}}, "unknown weight layout"),
        ({"model_state": {}}, "not a state dict"),
    ],
)
def test_bad_checkpoints_are_refused(tmp_path, obj, match):
    with pytest.raises(CheckpointError, match=match):
        import_checkpoint(_save(obj, tmp_path / "bad.pt"))


def test_missing_teacher_and_probda_checkpoint_refused(tmp_path):
    src = _save({"model_state": _ref_model(3).state_dict()}, tmp_path / "s.pt")
    with pytest.raises(CheckpointError, match="use-student"):
        import_checkpoint(src, teacher=True)
    save_checkpoint(import_checkpoint(src).checkpoint, tmp_path / "probda.pt")
    with pytest.raises(CheckpointError, match="already a probda checkpoint"):
        import_checkpoint(tmp_path / "probda.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        import_checkpoint(tmp_path / "missing.pt")


def test_junk_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_text("hello")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"model_state": {}}, protocol=2))
    for name in ("junk.pt", "legacy.pt"):
        with pytest.raises(CheckpointError, match="not a (readable )?torch checkpoint"):
            import_checkpoint(tmp_path / name)


def test_malicious_pickle_without_weights_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    src = _save({"payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        import_checkpoint(src)
    assert not marker.exists()


# ---- torch-em layout ---------------------------------------------------------


@pytest.mark.parametrize(
    "norm, filters", [(None, (8, 16, 24)), ("InstanceNorm", (8, 16, 24)), ("GroupNorm", (8, 8, 16))]
)
def test_torch_em_layout_config_inferred(tmp_path, norm, filters):
    cfg = TorchEmPUNetConfig(num_filters=filters, latent_dim=5, n_fcomb=3, norm=norm, in_channels=2)
    model = TorchEmPUNet(cfg).eval()
    result = import_checkpoint(_save({"model_state": model.state_dict()}, tmp_path / "te.pt"))
    assert result.model_class == "TorchEmPUNet" and result.config["norm"] == norm
    rebuilt = model_from_checkpoint(result.checkpoint)
    assert rebuilt.config == cfg
    x, z = torch.randn(1, 2, 48, 48), torch.randn(1, 5)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, z), model(x, z), atol=TOL, rtol=TOL)
        # any image size: padded to a multiple of 2**depth and cropped back
        assert rebuilt.sample_logits(torch.randn(1, 2, 45, 50), k=3).shape == (3, 1, 1, 45, 50)


def test_torch_em_running_stats_norm_needs_hint(tmp_path):
    model = TorchEmPUNet(TorchEmPUNetConfig(num_filters=(8, 16), norm="BatchNorm"))
    src = _save({"model_state": model.state_dict()}, tmp_path / "bn.pt")
    with pytest.raises(CheckpointError, match="--norm"):
        import_checkpoint(src)
    assert import_checkpoint(src, norm="BatchNorm").config["norm"] == "BatchNorm"
    src2 = _save({"model_state": model.state_dict(), "init": {"model_kwargs": {"norm": "BatchNorm"}}}, tmp_path / "bn2.pt")
    assert import_checkpoint(src2).config["norm"] == "BatchNorm"


def _crosscheck_venv() -> Path | None:
    env = os.environ.get("PROBDA_TORCH_EM_VENV")
    return Path(env) if env and (Path(env) / "bin" / "python").exists() else None


@pytest.mark.skipif(
    _crosscheck_venv() is None,
    reason="set PROBDA_TORCH_EM_VENV to a venv with torch-em 0.10.9 (or let .ci/torch_em_crosscheck.sh "
    "create one); CI runs .ci/torch_em_crosscheck.sh directly",
)
def test_torch_em_crosscheck_script(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    env = {**os.environ, "PROBDA_PYTHON": sys.executable, "PROBDA_CROSSCHECK_OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "torch_em_crosscheck.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all outputs equal" in proc.stdout
