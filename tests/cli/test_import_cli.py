"""`probda import CKPT -o OUT.pt` through the Typer CLI."""

from __future__ import annotations

import torch
import typer
from typer.testing import CliRunner

from probda_deploy.cli import import_cmd
from probda_deploy.models.checkpoint import load_checkpoint, model_from_checkpoint
from probda_deploy.models.punet import PUNet, PUNetConfig


def _app() -> typer.Typer:
    """The real `probda` app; a group with only `import` while it has fewer than two commands
    (Typer turns a one-command app into that command)."""
    from probda_deploy.cli.app import app

    if len(app.registered_commands) >= 2:
        return app
    group = typer.Typer()
    group.callback()(lambda: None)
    import_cmd.register(group)
    return group


def _reference_ckpt(path, *, teacher: bool):
    # probda's PUNet uses the reference parameter names; 8/16/24 filters are not doubling.
    torch.manual_seed(0)
    cfg = PUNetConfig(depth=3, initial_features=8, num_filters=(8, 16, 24), latent_dim=3, n_fcomb=4, align_corners=True)
    model = PUNet(cfg)
    obj = {"model_state": model.state_dict(), "iteration": 9, "init": {"model_class": "ProbabilisticUnet", "model_kwargs": {}}}
    if teacher:
        obj["teacher_state"] = PUNet(cfg).state_dict()
    torch.save(obj, path)
    return model


def test_import_prints_config_and_writes_probda_checkpoint(tmp_path):
    src, dst = tmp_path / "ref.pt", tmp_path / "out" / "imported.pt"
    student = _reference_ckpt(src, teacher=True)
    res = CliRunner().invoke(_app(), ["import", str(src), "-o", str(dst), "--use-student"])
    assert res.exit_code == 0, res.output
    for text in ("PUNet", "reference", "model_state", "num_filters", "(8, 16, 24)", "latent_dim", str(dst.name)):
        assert text in res.output
    ckpt = load_checkpoint(dst)  # weights_only loadable
    assert ckpt["model_class"] == "PUNet" and ckpt["iteration"] == 9
    model = model_from_checkpoint(ckpt)
    x, z = torch.randn(1, 1, 20, 28), torch.randn(1, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, z), student.eval()(x, z), atol=1e-5, rtol=1e-5)  # float32 sums in another order


def test_import_defaults_to_teacher(tmp_path):
    src, dst = tmp_path / "ref.pt", tmp_path / "t.pt"
    _reference_ckpt(src, teacher=True)
    res = CliRunner().invoke(_app(), ["import", str(src), "-o", str(dst)])
    assert res.exit_code == 0, res.output
    assert "teacher_state" in res.output
    assert load_checkpoint(dst)["provenance"]["imported_from"]["state"] == "teacher_state"


def test_import_errors_are_one_line_exit_1(tmp_path):
    src = tmp_path / "ref.pt"
    _reference_ckpt(src, teacher=False)
    runner = CliRunner()
    res = runner.invoke(_app(), ["import", str(src), "-o", str(tmp_path / "o.pt"), "--use-teacher"])
    assert res.exit_code == 1 and "error:" in res.output and "teacher" in res.output
    res = runner.invoke(_app(), ["import", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.pt")])
    assert res.exit_code == 1 and "no such checkpoint" in res.output
    assert not (tmp_path / "o.pt").exists()
