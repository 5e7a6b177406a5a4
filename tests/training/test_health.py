"""Label-free health of adaptation runs: views, diversity, verdicts, collapse stop."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from probda_deploy.data.augment import flip_rotate
from probda_deploy.data.patches import ImageSet, PatchSampler
from probda_deploy.errors import TrainingStopped
from probda_deploy.models.checkpoint import load_checkpoint, save_checkpoint
from probda_deploy.training.adapt import adapt
from probda_deploy.training.self_training import AdaptConfig, SelfTrainingStrategy
from probda_deploy.training.health import Snapshot, collapse, sample_diversity, verdict

CFG = AdaptConfig(iterations=4, batch_size=2, patch_size=32, samples=4, val_every=2, lr=1e-3, seed=5)
SOURCE_BIAS = 0.1  # the tiny model then calls about half of the target images foreground


def _sampler():
    rng = np.random.default_rng(0)
    return PatchSampler(ImageSet([rng.normal(size=(48, 48)).astype(np.float32) for _ in range(2)], None, ["a", "b"]), 32)


@pytest.mark.parametrize("strategy", ["mean-teacher", "fixmatch"])
def test_teacher_view_is_geometry_only_by_default(tiny_punet, strategy):
    cfg = replace(CFG, strategy=strategy)
    strat = SelfTrainingStrategy(tiny_punet, cfg, _sampler(), {"x": np.zeros((1, 1, 32, 32), np.float32)})
    for seed in range(5):
        batch = strat.sample_batch(np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        (expected,) = flip_rotate(rng, strat.target.sample(rng, cfg.batch_size)[0])
        assert np.array_equal(batch["x_teacher"], expected)  # no blur, noise or contrast on the teacher's view
    # the reference's weak view is still there on request, and it changes intensities
    weak = replace(cfg, teacher_view="weak")
    strat = SelfTrainingStrategy(tiny_punet, weak, _sampler(), {"x": np.zeros((1, 1, 32, 32), np.float32)})
    changed = []
    for seed in range(8):
        batch = strat.sample_batch(np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        (geo,) = flip_rotate(rng, strat.target.sample(rng, cfg.batch_size)[0])
        changed.append(not np.allclose(batch["x_teacher"], geo))
    assert any(changed)


def test_sample_diversity_counts_disagreement():
    same = torch.zeros(4, 1, 1, 8, 8)
    same[..., 2:6, 2:6] = 1
    assert sample_diversity(same) == 0.0
    two = same.clone()
    two[2:, ..., 2:6, 2:6] = 0
    two[2:, ..., 0:2, 0:2] = 1  # half the samples mark another, disjoint object
    # pairs: 2 of 6 pairs agree (dice 1), 4 of 6 disagree fully (dice 0) -> diversity 4/6
    assert sample_diversity(two) == pytest.approx(4 / 6)


def _snap(fg_mask, certain):
    m = np.asarray(fg_mask, bool)[None, None]
    return Snapshot(float(m.mean()), float(np.mean(certain)), 0.0, m.astype(np.float32), m, np.asarray(certain, bool)[None, None])


def test_verdicts_from_hand_built_snapshots():
    src = _snap([[1, 1, 0, 0]] * 4, [[1, 0, 0, 1]] * 4)  # column 1 and 2 uncertain
    assert verdict(src, src)[0] == "unchanged"
    fixed = _snap([[1, 1, 1, 0]] * 4, [[1, 1, 1, 1]] * 4)  # column 2 flipped, where the source was unsure
    assert verdict(src, fixed)[0] == "improved"
    drift = _snap([[1, 1, 0, 1]] * 4, [[1, 1, 1, 1]] * 4)  # column 3 flipped, where the source was sure
    word, reason = verdict(src, drift)
    assert word == "drifting" and "sure" in reason
    # with the frozen source teacher a changed sure pixel can be a corrected error: no drift by itself
    word, reason = verdict(src, drift, feedback=False)
    assert word == "improved" and "0% of them where the source model was unsure" in reason
    empty = _snap([[0, 0, 0, 0]] * 4, [[1, 1, 1, 1]] * 4)
    assert "collapsed" in collapse(src, empty) and verdict(src, empty)[0] == "drifting"
    unsure = _snap([[1, 1, 1, 0]] * 4, [[0, 0, 0, 1]] * 4)  # column 2 fixed, but now unsure almost everywhere
    word, reason = verdict(src, unsure)
    assert word == "drifting" and "less sure" in reason
    # a frozen source teacher's labels cannot feed back: less sure is no drift there
    assert verdict(src, unsure, feedback=False)[0] == "improved"
    grown = _snap([[1, 1, 1, 0]] * 4, [[1, 1, 1, 1]] * 4)
    assert collapse(src, grown) is None  # 1.5x the foreground, half the background: within the bounds


def test_collapse_stops_the_run_and_keeps_the_last_healthy_checkpoint(tiny_checkpoint, target_data, tmp_path):
    images, _ = target_data
    run = tmp_path / "run"
    adapt(tiny_checkpoint, images, run_dir=run, config=replace(CFG, iterations=2))
    health = json.loads((run / "health.json").read_text())
    assert health["verdict"] in ("improved", "unchanged", "drifting") and health["source"]["foreground"] > 0
    # force a collapse: the deployed teacher and the student now predict background everywhere
    ckpt = load_checkpoint(run / "latest.pt")
    for key in ("state_dict", "ema_state_dict"):
        ckpt[key]["fcomb.last_layer.bias"] = torch.full_like(ckpt[key]["fcomb.last_layer.bias"], -60.0)
    save_checkpoint(ckpt, run / "latest.pt")
    with pytest.raises(TrainingStopped, match=r"collapsed towards background.*best.pt is the last healthy checkpoint \(iteration 2\)"):
        adapt(tiny_checkpoint, images, run_dir=run, config=CFG, resume=True)
    assert load_checkpoint(run / "latest.pt")["iteration"] == 2  # the collapsed state was not saved
    health = json.loads((run / "health.json").read_text())
    assert health["verdict"] == "collapsed" and health["history"][-1]["iteration"] == 4
    assert health["best_iteration"] == 2  # what best.pt holds, as the message says
    assert "stopped" in health["sentence"]


def _disc_data(ambiguous: bool) -> ImageSet:
    """Images of discs; every image twice, labelled by two 'annotators' (dilated / eroded) or one."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    imgs, labs = [], []
    for _ in range(6):
        m = np.zeros((32, 32), bool)
        for _ in range(3):
            cy, cx = rng.uniform(6, 26, 2)
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        img = (m + rng.normal(0, 0.1, m.shape)).astype(np.float32)
        second = ndimage.binary_erosion(m, iterations=2) if ambiguous else ndimage.binary_dilation(m, iterations=3)
        for lab in (ndimage.binary_dilation(m, iterations=3), second):
            imgs.append(img)
            labs.append(lab.astype(np.float32))
    return ImageSet(imgs, labs, [str(i) for i in range(len(imgs))])


def test_sample_diversity_is_real_after_training_on_ambiguous_labels(tmp_path):
    diversity = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is as fast and does not spin on a busy machine
    try:
        _train_both(diversity, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert diversity[True] > 0.01
    assert diversity[True] > 5 * diversity[False]  # the samples disagree where the annotators do


def _train_both(diversity, tmp_path):
    from probda_deploy.data.patches import grid_patches
    from probda_deploy.models import build_model
    from probda_deploy.training.loop import LoopConfig, fit
    from probda_deploy.training.source import SupervisedStrategy

    for ambiguous in (True, False):
        data = _disc_data(ambiguous)
        torch.manual_seed(0)
        model = build_model("punet-small", initial_features=8, depth=3)
        strat = SupervisedStrategy(model, PatchSampler(data, 32), grid_patches(data, 32), batch_size=4, augment="paper")
        res = fit(strat, LoopConfig(iterations=150, lr=1e-3, val_every=150), run_dir=tmp_path / str(ambiguous))
        diversity[ambiguous] = res.last_metrics["val_diversity"]


def test_all_foreground_is_collapse_whatever_the_source_foreground():
    src = _snap([[1, 1, 0, 0]] * 4, [[1, 1, 1, 1]] * 4)  # half foreground: 3x its foreground cannot be reached
    flood = _snap([[1, 1, 1, 1]] * 4, [[1, 1, 1, 1]] * 4)
    assert "collapsed towards foreground" in collapse(src, flood) and verdict(src, flood)[0] == "drifting"
    most = _snap([[1, 1, 1, 0]] * 4, [[1, 1, 1, 1]] * 4)  # 3/4: background at half the source's, within bounds
    assert collapse(src, most) is None


def test_a_run_that_is_never_healthy_leaves_the_source_model_as_best(tiny_checkpoint, target_data, tmp_path, monkeypatch):
    """A source model calling over 1/3 of the target foreground, and a run forced to go all-foreground."""
    images, _ = target_data
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["state_dict"]["fcomb.last_layer.bias"] = torch.full_like(ckpt["state_dict"]["fcomb.last_layer.bias"], SOURCE_BIAS)
    source = tmp_path / "source.pt"
    save_checkpoint(ckpt, source)
    original = SelfTrainingStrategy.on_step_end

    def towards_foreground(self, iteration):  # fault injection: after each real step, every pixel pushed to foreground
        with torch.no_grad():
            self.model.fcomb.last_layer.bias += 5.0
        original(self, iteration)

    monkeypatch.setattr(SelfTrainingStrategy, "on_step_end", towards_foreground)
    run = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="collapsed towards foreground.*no validation was healthy.*source model"):
        adapt(source, images, run_dir=run, config=replace(CFG, strategy="fixmatch", teacher="model", iterations=6))
    health = json.loads((run / "health.json").read_text())
    assert 1 / 3 < health["source"]["foreground"] < 0.9 and health["history"][0]["val_foreground"] > 0.95
    assert health["verdict"] == "collapsed" and health["best_iteration"] == 0
    best = load_checkpoint(run / "best.pt")
    assert best["iteration"] == 0 and all(torch.equal(best["state_dict"][k], v) for k, v in ckpt["state_dict"].items())
