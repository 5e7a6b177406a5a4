
import json
import logging
import pytest
import torch

from probda_deploy.errors import CheckpointError, ConfigError
from probda_deploy.models.checkpoint import load_checkpoint
from probda_deploy.training.config import TrainConfig
from probda_deploy.training.source import train_source

CFG = TrainConfig(model="punet-small", iterations=6, batch_size=2, patch_size=32, lr=1e-3, val_every=3, seed=3)
OPTS = dict(initial_features=8, depth=3)


def test_resume_equals_uninterrupted_run(source_data, tmp_path):
    images, labels = source_data
    full = train_source(images, labels, run_dir=tmp_path / "full", config=CFG, model_options=OPTS)
    from dataclasses import replace

    train_source(images, labels, run_dir=tmp_path / "split", config=replace(CFG, iterations=4), model_options=OPTS)
    resumed = train_source(images, labels, run_dir=tmp_path / "split", config=CFG, model_options=OPTS, resume=True)
    a = load_checkpoint(tmp_path / "full" / "latest.pt")
    b = load_checkpoint(tmp_path / "split" / "latest.pt")
    assert a["iteration"] == b["iteration"] == 6
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
    assert resumed.iterations == full.iterations
    # optimizer state restored too
    torch.testing.assert_close(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"], rtol=0, atol=0)


def test_run_writes_best_latest_and_metrics(source_data, tmp_path):
    images, labels = source_data
    res = train_source(images, labels, run_dir=tmp_path / "r", config=CFG, model_options=OPTS)
    assert (tmp_path / "r" / "best.pt").exists() and (tmp_path / "r" / "latest.pt").exists()
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [3, 6]
    assert {"val_metric", "val_dice", "lr", "train_loss"} <= set(lines[0])
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert "optimizer" not in best and best["train_config"]["patch_size"] == 32
    assert res.best_metric == min(x["val_metric"] for x in lines)


def test_existing_run_needs_resume_and_resume_needs_run(source_data, tmp_path):
    images, labels = source_data
    from dataclasses import replace

    cfg = replace(CFG, iterations=1, val_every=1)
    train_source(images, labels, run_dir=tmp_path / "r", config=cfg, model_options=OPTS)
    with pytest.raises(ConfigError, match="already holds a run"):
        train_source(images, labels, run_dir=tmp_path / "r", config=cfg, model_options=OPTS)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_source(images, labels, run_dir=tmp_path / "empty", config=cfg, model_options=OPTS, resume=True)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(source_data, tmp_path, caplog):
    """metrics.jsonl / best.pt / temp files without a latest.pt are orphans: cleared, and the run starts at 0."""
    from dataclasses import replace

    cfg = replace(CFG, iterations=2, val_every=1)
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 1, "val_metric": 0.5}\n{"iter')
    (run / ".latest.pt.abc.tmp").write_bytes(b"half")
    logger = logging.getLogger("probda_deploy")  # the CLI's setup_logging stops propagation to caplog's root handler
    logger.addHandler(caplog.handler)
    try:
        res = train_source(*source_data, run_dir=run, config=cfg, model_options=OPTS, resume=True)
    finally:
        logger.removeHandler(caplog.handler)
    assert "no latest.pt to resume from" in caplog.text
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2] and res.iterations == 2
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_patch_size_must_fit_network(source_data, tmp_path):
    from dataclasses import replace

    with pytest.raises(ConfigError, match="multiple of 4"):
        train_source(*source_data, run_dir=tmp_path / "r", config=replace(CFG, patch_size=30), model_options=OPTS)


def test_unet_source_training_learns(source_data, tmp_path):
    from dataclasses import replace

    cfg = replace(CFG, model="unet-small", iterations=30, val_every=15, lr=3e-3, augment="paper")
    train_source(*source_data, run_dir=tmp_path / "u", config=cfg, model_options=OPTS)
    lines = [json.loads(x) for x in (tmp_path / "u" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["val_dice"] > 0.5
