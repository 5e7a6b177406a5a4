import pytest
import torch

from probda_deploy.training.losses import bce_loss, dice_loss, elbo_loss


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_dice_loss_hand_computed():
    # p = [0.8, 0.2, 0.5, 0.5], t = [1, 0, 1, 0]
    logits = _logit([0.8, 0.2, 0.5, 0.5]).reshape(1, 1, 2, 2)
    t = torch.tensor([1.0, 0, 1, 0]).reshape(1, 1, 2, 2)
    num = 2 * (0.8 + 0.5)
    den = (0.64 + 0.04 + 0.25 + 0.25) + 2
    assert dice_loss(logits, t, eps=0).item() == pytest.approx(1 - num / den, abs=1e-6)


def test_dice_loss_perfect_and_weighted():
    t = torch.tensor([1.0, 0, 1, 0]).reshape(1, 1, 2, 2)
    assert dice_loss(_logit([0.999999] * 4).reshape(1, 1, 2, 2) * t * 2 - 20 * (1 - t), t).item() < 1e-4
    logits = _logit([0.8, 0.2, 0.5, 0.5]).reshape(1, 1, 2, 2)
    w = torch.tensor([1.0, 1, 0, 0]).reshape(1, 1, 2, 2)  # only the first two pixels count
    expected = 1 - 2 * 0.8 / (0.64 + 0.04 + 1)
    assert dice_loss(logits, t, w, eps=0).item() == pytest.approx(expected, abs=1e-6)


def test_masked_pixels_contribute_nothing_to_value_or_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    t = (torch.rand(2, 1, 8, 8) > 0.5).float()
    w = (torch.rand(2, 1, 8, 8) > 0.5).float()
    for fn in (dice_loss, bce_loss):
        logits.grad = None
        loss = fn(logits, t, w)
        loss.backward()
        assert torch.all(logits.grad[w == 0] == 0)
        # changing masked pixels leaves the loss unchanged
        changed = logits.detach().clone()
        changed[w == 0] = 123.0
        assert fn(changed, t, w).item() == pytest.approx(loss.item(), abs=1e-6)


def test_bce_weighted_mean():
    logits = torch.zeros(1, 1, 1, 2)
    t = torch.tensor([[[[1.0, 0.0]]]])
    assert bce_loss(logits, t, torch.tensor([[[[1.0, 0.0]]]])).item() == pytest.approx(0.693147, abs=1e-5)


def test_elbo_has_kl_and_reconstruction(tiny_punet):
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    y = (torch.rand(2, 1, 16, 16) > 0.5).float()
    loss, logs = elbo_loss(tiny_punet.train(), x, y)
    assert logs["kl"] >= 0 and 0 <= logs["rec"] <= 1
    assert loss.item() >= logs["rec"] + tiny_punet.config.beta * logs["kl"]
    loss.backward()
    assert tiny_punet.posterior.conv_layer.weight.grad is not None  # posterior trained through KL + rec


def test_dice_plus_bce_is_the_sum_and_respects_weights():
    from probda_deploy.training.losses import RECONSTRUCTION, bce_loss, dice_loss

    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 1, 8, 8, generator=g), (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
    weight = (torch.rand(2, 1, 8, 8, generator=g) > 0.3).float()
    both = RECONSTRUCTION["dice+bce"](logits, target, weight)
    torch.testing.assert_close(both, dice_loss(logits, target, weight) + bce_loss(logits, target, weight))
    # a pixel with weight 0 changes nothing
    flipped = logits.clone()
    flipped[weight == 0] = -flipped[weight == 0]
    torch.testing.assert_close(RECONSTRUCTION["dice+bce"](flipped, target, weight), both)
