import json

from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.models.checkpoint import load_checkpoint

runner = CliRunner()


def _config(tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text("val_every = 2\nbatch_size = 2\n[model_options]\ninitial_features = 8\ndepth = 3\n")
    return cfg


def test_train_then_info_then_resume(source_data, tmp_path):
    images, labels = source_data
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(run), "--config", str(_config(tmp_path)),
                              "--iterations", "4", "--patch-size", "32", "--seed", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "val dice" in res.output and (run / "best.pt").exists() and (run / "latest.pt").exists()
    ckpt = load_checkpoint(run / "latest.pt")
    assert ckpt["model_config"]["initial_features"] == 8 and ckpt["train_config"]["val_every"] == 2
    assert ckpt["train_config"]["seed"] == 1 and ckpt["iteration"] == 4
    info = runner.invoke(app, ["info", str(run)])
    assert info.exit_code == 0 and "PUNet" in info.output and "validation history" in info.output
    again = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(run), "--iterations", "4"])
    assert again.exit_code == 1 and "already holds a run" in again.output
    more = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(run), "--iterations", "6", "--resume"])
    assert more.exit_code == 0, more.output
    assert load_checkpoint(run / "latest.pt")["iteration"] == 6


def test_train_fast_variant_has_narrow_latent_nets_and_exports(source_data, tmp_path):
    """--model punet-small-fast: prior/posterior at half width, UNet unchanged; export runs its torch parity check."""
    import numpy as np

    from probda_deploy.exporters import export_onnx
    from probda_deploy.models.checkpoint import model_from_checkpoint
    from probda_deploy.runtime import OnnxBackend

    images, labels = source_data
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "-o", str(run), "--model", "punet-small-fast",
                              "--iterations", "2", "--patch-size", "32", "--val-every", "2", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "latest.pt")
    assert list(ckpt["model_config"]["gaussian_filters"]) == [8, 16, 32, 64]
    model = model_from_checkpoint(ckpt)
    assert model.prior.conv_layer.in_channels == model.posterior.conv_layer.in_channels == 64
    assert model.fcomb.features == 16 and model.config.filters == [16, 32, 64, 128]
    folder = export_onnx(run / "latest.pt", tmp_path / "m.probda")
    img = np.random.default_rng(0).normal(size=(40, 56)).astype(np.float32)
    got = OnnxBackend(folder, device="cpu").predict(img, k=4, seed=0, tile=None)
    assert got["prob"].shape == img.shape and np.isfinite(got["prob"]).all()
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[model_options]\ndepth = 3\n")
    bad = runner.invoke(app, ["train", "-i", str(images), "-l", str(labels), "--model", "punet-small-fast", "--config", str(cfg)])
    assert bad.exit_code == 1 and "needs one entry per level (3, the depth)" in bad.output


def test_train_bad_inputs_are_one_line(tmp_path, source_data):
    res = runner.invoke(app, ["train", "-i", str(tmp_path / "nope"), "-l", str(tmp_path)])
    assert res.exit_code == 1 and "no such file or folder" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("iterationz = 3\n")
    res = runner.invoke(app, ["train", "-i", str(source_data[0]), "-l", str(source_data[1]), "--config", str(bad)])
    assert res.exit_code == 1 and "unknown option(s) iterationz" in res.output


def test_adapt_cli_writes_ema_checkpoint_with_provenance(tiny_checkpoint, target_data, tmp_path):
    images, labels = target_data
    run = tmp_path / "adapt"
    res = runner.invoke(app, ["adapt", str(tiny_checkpoint), "-t", str(images), "-o", str(run), "--iterations", "2",
                              "--patch-size", "32", "--batch-size", "2", "--samples", "4", "--val-every", "1",
                              "--target-labels", str(labels), "--filter", "weighting", "--consensus", "confident"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "best.pt")
    assert "ema_state_dict" in ckpt and ckpt["strategy"] == "mean-teacher"
    assert ckpt["adapt_config"]["filter"] == "weighting" and ckpt["adapt_config"]["consensus"] == "confident"
    assert ckpt["provenance"]["source_sha256"] and "val_dice" in ckpt["metrics"]
    assert ckpt["provenance"]["teacher"] == "source" and "pseudo-labels: source" in res.output
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2]
    # every loss term is logged, and the run ends with its label-free health summary
    assert {"train_target_rec", "train_target_kl", "val_diversity", "val_foreground", "verdict"} <= set(lines[-1])
    health = json.loads((run / "health.json").read_text())
    assert health["verdict"] in ("improved", "unchanged", "drifting") and f"verdict: {health['verdict']}" in res.output
    assert "sample diversity" in res.output
    bad = runner.invoke(app, ["adapt", str(tiny_checkpoint), "-t", str(images), "--teacher-view", "blurry"])
    assert bad.exit_code != 0 and "blurry" in bad.output
    bad = runner.invoke(app, ["adapt", str(tiny_checkpoint), "-t", str(images), "--select-on", "labels"])
    assert bad.exit_code == 1 and "--select-on labels needs --target-labels" in bad.output
    bad = runner.invoke(app, ["adapt", str(tiny_checkpoint), "-t", str(images), "-o", str(tmp_path / "fm"),
                              "--strategy", "fixmatch", "--teacher", "source"])
    assert bad.exit_code == 1 and "--teacher source does not go with --strategy fixmatch" in bad.output
    assert not (tmp_path / "fm").exists()  # refused before a run folder is made
