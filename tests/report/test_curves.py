"""Training curves from metrics.jsonl and `probda info RUN_DIR --plot`."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.errors import ConfigError
from probda_deploy.report.curves import CURVES_SIZE, plot_training_curves, read_metrics


def write_metrics(run, n=4, torn=True):
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"iteration": 10 * (i + 1), "train_loss": 1.0 / (i + 1), "train_kl": 0.1, "val_metric": 0.5 - 0.05 * i,
                         "val_dice": 0.5 + 0.05 * i, "lr": 1e-4, "best": True}) for i in range(n)]
    text = "\n".join(lines) + "\n" + ('{"iteration": 50, "train_lo' if torn else "")
    (run / "metrics.jsonl").write_text(text)


def test_plot_training_curves(tmp_path, caplog):
    run = tmp_path / "run"
    write_metrics(run)
    assert len(read_metrics(run)) == 4
    assert "not valid JSON" in caplog.text
    png = plot_training_curves(run)
    assert png == run / "training_curves.png"
    img = iio.imread(png)
    assert img.shape[:2] == (CURVES_SIZE[1], CURVES_SIZE[0]) and img.std() > 10
    assert plot_training_curves(run, tmp_path / "x" / "c.png").is_file()


def test_missing_or_empty_metrics(tmp_path):
    with pytest.raises(ConfigError, match="metrics.jsonl: no such file"):
        plot_training_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("\n")
    with pytest.raises(ConfigError, match="no validation lines yet"):
        plot_training_curves(tmp_path)


def test_info_plot_cli(tmp_path):
    run = tmp_path / "run"
    write_metrics(run, torn=False)
    result = CliRunner().invoke(app, ["info", str(run), "--plot"])
    assert result.exit_code == 0, result.output
    assert "training_curves.png" in result.output and (run / "training_curves.png").is_file()
    result = CliRunner().invoke(app, ["info", str(tmp_path / "nothing"), "--plot"])
    assert result.exit_code == 1
