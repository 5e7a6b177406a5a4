import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from probda_deploy.errors import ConfigError
from probda_deploy.models.checkpoint import load_checkpoint
from probda_deploy.training.adapt import adapt
from probda_deploy.training.self_training import AdaptConfig, SelfTrainingStrategy
from probda_deploy.data.augment import flip_rotate
from probda_deploy.method import latent_eps, reduce_samples, standardize
from probda_deploy.training.losses import supervised_loss
from probda_deploy.training.pseudo_labels import PseudoLabelConfig, align_distribution, ema_update, pseudo_labels, source_maps
from probda_deploy.data.patches import ImageSet, PatchSampler

CFG = AdaptConfig(iterations=4, batch_size=2, patch_size=32, samples=4, val_every=2, lr=1e-3, seed=5)


def test_ema_update_arithmetic(tiny_punet):
    teacher, student = copy.deepcopy(tiny_punet), copy.deepcopy(tiny_punet)
    for p in student.parameters():
        p.data.add_(1.0)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, 0.9)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * student.state_dict()[k])


def test_teacher_momentum_follows_the_run_length(tiny_punet):
    # an EMA teacher spans 3 time constants of 1 / (1 - momentum) steps over the run, whatever its length
    assert AdaptConfig(iterations=100, teacher="ema").momentum == pytest.approx(0.97)
    assert AdaptConfig(iterations=1000, teacher="ema").momentum == pytest.approx(0.997)
    # with the source teacher the EMA is only deployed: 10 time constants, a shorter lag behind the student
    assert AdaptConfig(iterations=1000).momentum == pytest.approx(0.99)
    assert AdaptConfig(iterations=10).momentum == 0.9 and AdaptConfig(iterations=10**6).momentum == 0.9999
    assert AdaptConfig(iterations=1000, ema=0.5).momentum == 0.5
    strategy = SelfTrainingStrategy(copy.deepcopy(tiny_punet), replace(CFG, iterations=300, teacher="ema"), None, {"x": None})
    before = {k: v.clone() for k, v in strategy.deployed.state_dict().items()}
    for p in strategy.model.parameters():
        p.data.add_(1.0)
    strategy.on_step_end(1)
    for k, v in strategy.deployed.state_dict().items():
        torch.testing.assert_close(v, before[k] + 0.01)


def test_distribution_alignment_arithmetic():
    # source 50% foreground, target 25%: foreground x 0.5/0.25 = 2, background x 0.5/0.75 = 2/3, renormalised
    y = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = align_distribution(y, source_fraction=0.5, target_fraction=0.25)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.75, 1.0]))
    # equal fractions change nothing; the result stays a probability
    torch.testing.assert_close(align_distribution(y, source_fraction=0.3, target_fraction=0.3), y)
    assert align_distribution(torch.rand(100), source_fraction=0.9, target_fraction=0.01).max() <= 1


def test_pseudo_labels_are_sample_mean_and_masking_weights(tiny_punet):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    cfg = PseudoLabelConfig(samples=6, filter="masking")
    torch.manual_seed(1)
    y, w, c = pseudo_labels(tiny_punet, x, cfg)
    torch.manual_seed(1)
    samples = torch.sigmoid(tiny_punet.sample_logits(x, k=6))
    torch.testing.assert_close(y, samples.mean(0))
    assert torch.equal(w, (c == 1).float())


def test_bad_options_are_clear():
    with pytest.raises(ConfigError, match="--consensus .majority.: unknown"):
        PseudoLabelConfig(rule="majority")
    with pytest.raises(ConfigError, match="thresholds"):
        PseudoLabelConfig(high=0.4)
    with pytest.raises(ConfigError, match="needs labeled source data"):
        _strategy(None, replace(CFG, joint=True))


def _strategy(model, cfg, source=None):
    rng = np.random.default_rng(0)
    imgs = [rng.normal(size=(40, 40)).astype(np.float32) for _ in range(2)]
    target = PatchSampler(ImageSet(imgs, None, ["a", "b"]), 32)
    val = {"x": rng.normal(size=(2, 1, 32, 32)).astype(np.float32), "y": None}
    return SelfTrainingStrategy(model, cfg, target, val, source=source)


def test_fixmatch_labels_with_its_ema_and_trains_on_the_student_view_only(tiny_punet):
    strat = _strategy(tiny_punet, replace(CFG, strategy="fixmatch"))
    assert strat.teacher is strat.average and strat.deployed is strat.average
    assert _strategy(copy.deepcopy(tiny_punet), replace(CFG, strategy="fixmatch", teacher="model")).teacher is None
    batch = strat.sample_batch(np.random.default_rng(0))
    assert not np.allclose(batch["x_teacher"], batch["x_student"])
    seen = []
    hook = tiny_punet.posterior.register_forward_hook(lambda m, inp, out: seen.append(inp[0][:, :1].clone()))
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    strat.step(tb)
    hook.remove()
    # the only gradient-carrying pass (posterior runs in the ELBO only) sees the strong view
    assert len(seen) == 1 and torch.equal(seen[0], tb["x_student"])


def test_joint_loss_is_mean_of_source_and_target(tiny_punet):
    rng = np.random.default_rng(0)
    src = ImageSet([rng.normal(size=(40, 40)).astype(np.float32)], [(rng.random((40, 40)) > 0.7).astype(np.float32)], ["s"])
    strat = _strategy(tiny_punet, replace(CFG, joint=True), source=PatchSampler(src, 32))
    batch = {k: torch.from_numpy(v) for k, v in strat.sample_batch(rng).items()}
    torch.manual_seed(3)
    loss, logs = strat.step(batch)
    # same RNG stream: target pseudo-labels, target ELBO, source ELBO
    expected = (logs["source_loss"] + logs["target_loss"]) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_mean_teacher_saves_teacher_and_resume_is_exact(tiny_checkpoint, target_data, tmp_path):
    images, labels = target_data
    cfg = replace(CFG, teacher="ema")  # the paper's teacher; the source teacher has its own test below
    full = adapt(tiny_checkpoint, images, run_dir=tmp_path / "full", config=cfg, target_labels=labels)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "split", config=replace(cfg, iterations=2), target_labels=labels)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "split", config=cfg, target_labels=labels, resume=True)
    a, b = load_checkpoint(tmp_path / "full" / "latest.pt"), load_checkpoint(tmp_path / "split" / "latest.pt")
    for key in ("state_dict", "ema_state_dict"):
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0)
    assert a["strategy"] == "mean-teacher" and a["provenance"]["source_sha256"]
    assert {"val_agreement", "val_dice"} <= set(full.last_metrics)
    # teacher differs from the student (EMA) and from the source
    assert any(not torch.equal(a["state_dict"][k], a["ema_state_dict"][k]) for k in a["state_dict"])


def test_source_teacher_labels_with_the_frozen_source_and_deploys_the_student_average(tiny_checkpoint, target_data, tmp_path):
    images, labels = target_data
    cfg = CFG  # the default teacher is the source model
    full = adapt(tiny_checkpoint, images, run_dir=tmp_path / "full", config=cfg, target_labels=labels)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "split", config=replace(cfg, iterations=2), target_labels=labels)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "split", config=cfg, target_labels=labels, resume=True)
    src = load_checkpoint(tiny_checkpoint)["state_dict"]
    a, b = load_checkpoint(tmp_path / "full" / "latest.pt"), load_checkpoint(tmp_path / "split" / "latest.pt")
    for key in ("state_dict", "ema_state_dict"):  # resume is exact, the teacher rebuilt from the source
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0)
    assert a["provenance"]["teacher"] == "source" and "val_agreement" in full.last_metrics
    # deployed = EMA of the student: moved away from the source, and not the student itself
    assert any(not torch.equal(a["ema_state_dict"][k], src[k]) for k in src)
    assert any(not torch.equal(a["state_dict"][k], a["ema_state_dict"][k]) for k in src)


def test_source_teacher_never_moves(tiny_punet):
    strategy = SelfTrainingStrategy(copy.deepcopy(tiny_punet), CFG, None, {"x": None})
    source = {k: v.clone() for k, v in tiny_punet.state_dict().items()}
    for p in strategy.model.parameters():
        p.data.add_(1.0)
    strategy.on_step_end(1)
    assert strategy.deployed is strategy.average and strategy.teacher is not strategy.average
    for k, v in strategy.teacher.state_dict().items():
        torch.testing.assert_close(v, source[k], rtol=0, atol=0)
    assert any(not torch.equal(v, source[k]) for k, v in strategy.average.state_dict().items())


@pytest.mark.parametrize("bad, match", [(dict(teacher="student"), "--teacher"),
                                        (dict(teacher="source", strategy="fixmatch"), "does not go with --strategy fixmatch"),
                                        (dict(teacher="model"), "does not go with --strategy mean-teacher"),
                                        (dict(teacher="source", joint=True, from_scratch=True), "from-scratch")])
def test_teacher_option_is_checked(bad, match):
    with pytest.raises(ConfigError, match=match):
        replace(CFG, **bad).check()


def test_who_makes_the_pseudo_labels():
    assert CFG.labeler == "source" and replace(CFG, teacher="ema").labeler == "ema"
    # the frozen source model's labels are made once per image unless its view or statistics vary per patch
    assert CFG.fixed_labels and not replace(CFG, teacher="ema").fixed_labels
    assert not replace(CFG, teacher_view="weak").fixed_labels and not replace(CFG, normalization="patch").fixed_labels
    assert replace(CFG, joint=True, from_scratch=True).labeler == "ema"  # no source model to label with
    assert replace(CFG, strategy="fixmatch").labeler == "ema"  # the model itself feeds back and collapses
    assert replace(CFG, strategy="fixmatch", teacher="model").labeler == "model"


def test_source_labels_are_whole_image_maps_cropped_and_flipped_with_the_patch(tiny_punet):
    rng = np.random.default_rng(0)
    imgs = [rng.normal(size=(48, 40)).astype(np.float32) + 2 * (i + 1) for i in range(2)]
    maps = source_maps(tiny_punet, imgs, CFG.pseudo, seed=CFG.seed)
    for i, (im, m) in enumerate(zip(imgs, maps)):  # the whole image's samples with the draws of "image i"
        eps = torch.from_numpy(latent_eps(CFG.seed, f"image {i}", CFG.samples, tiny_punet.config.latent_dim)[:, None])
        with torch.no_grad():
            s = torch.sigmoid(tiny_punet.sample_logits(torch.from_numpy(standardize(im))[None, None], eps=eps))[:, 0, 0]
        ref = reduce_samples(s.numpy())
        assert m.shape == (2, 48, 40) and np.allclose(m[0], ref["prob"], atol=1e-6)
        assert np.mean(m[1] != ref["consensus"]) < 1e-3  # a sample within float noise of a threshold may count differently
    target = PatchSampler(ImageSet(imgs, None, ["a", "b"]), 32).with_labels(maps)
    strat = SelfTrainingStrategy(copy.deepcopy(tiny_punet), CFG, target, {"x": None})
    batch = strat.sample_batch(np.random.default_rng(3))
    assert "x_teacher" not in batch  # nothing left for a teacher to do during the run
    # the same draws without labels give the same student view; the labels follow the patch's crop and flips
    plain = SelfTrainingStrategy(copy.deepcopy(tiny_punet), replace(CFG, teacher="ema"),
                                 PatchSampler(ImageSet(imgs, None, ["a", "b"]), 32), {"x": None})
    assert np.array_equal(batch["x_student"], plain.sample_batch(np.random.default_rng(3))["x_student"])
    r = np.random.default_rng(3)
    x, m = target.sample(r, CFG.batch_size)
    _, m = flip_rotate(r, x, m)
    assert np.array_equal(batch["pseudo"], m) and m.shape == (CFG.batch_size, 2, 32, 32)
    # the step trains on y = the mean probability, weighted by the consensus mask
    tb = {k: torch.from_numpy(v) for k, v in batch.items()}
    torch.manual_seed(0)
    loss, _ = strat.step(tb)
    torch.manual_seed(0)
    y, c = tb["pseudo"][:, :1], tb["pseudo"][:, 1:]
    expected, _ = supervised_loss(strat.model, tb["x_student"], y, (c >= 1).float())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_target_labels_only_measure_the_run(tiny_checkpoint, target_data, tmp_path):
    images, labels = target_data
    cfg = replace(CFG, iterations=2, val_every=2)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "with", config=cfg, target_labels=labels)
    adapt(tiny_checkpoint, images, run_dir=tmp_path / "without", config=cfg)
    a, b = load_checkpoint(tmp_path / "with" / "latest.pt"), load_checkpoint(tmp_path / "without" / "latest.pt")
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0)
