import pytest
import torch
import torch.nn.functional as F

from probda_deploy.models import PUNet, PUNetConfig, UNet, UNetConfig, build_model, kl_diag_gaussians
from probda_deploy.models.blocks import pad_to_multiple
from probda_deploy.errors import ConfigError


@pytest.mark.parametrize("h,w", [(37, 53), (1, 1), (3, 5), (64, 64), (17, 200)])
def test_shapes_for_any_size(tiny_punet, tiny_unet, h, w):
    x = torch.randn(2, 1, h, w)
    with torch.no_grad():
        assert tiny_punet.sample_logits(x, k=3).shape == (3, 2, 1, h, w)
        assert tiny_punet(x, torch.zeros(2, 6)).shape == (2, 1, h, w)
        assert tiny_unet(x).shape == (2, 1, h, w)


def test_pad_to_multiple_reflect_and_crop_back():
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    xp, (h, w) = pad_to_multiple(x, 4)
    assert xp.shape[-2:] == (8, 8) and (h, w) == (5, 7)
    assert torch.equal(xp[..., :5, :7], x)
    assert torch.equal(xp[..., 5, :7], x[..., 3, :])  # reflect, not zeros


def test_sampling_equals_k_full_fcomb_passes(tiny_punet):
    torch.manual_seed(1)
    x = torch.randn(2, 1, 40, 24)
    eps = torch.randn(5, 2, 6)
    with torch.no_grad():
        fast = tiny_punet.sample_logits(x, eps=eps)
        xp, _ = pad_to_multiple(x, tiny_punet.config.size_multiple)
        mu, ls = tiny_punet.prior_params(xp)
        slow = torch.stack([tiny_punet(x, mu + torch.exp(ls) * eps[k]) for k in range(5)])
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_unet_runs_once_per_sampling_call(tiny_punet):
    calls = []
    handle = tiny_punet.unet.register_forward_hook(lambda *a: calls.append(1))
    prior_calls = []
    handle2 = tiny_punet.prior.register_forward_hook(lambda *a: prior_calls.append(1))
    with torch.no_grad():
        tiny_punet.sample_logits(torch.randn(1, 1, 32, 32), k=16)
    handle.remove(), handle2.remove()
    assert len(calls) == 1 and len(prior_calls) == 1


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    mq, lq, mp, lp = (torch.randn(4, 6) for _ in range(4))
    q = torch.distributions.Independent(torch.distributions.Normal(mq, lq.exp()), 1)
    p = torch.distributions.Independent(torch.distributions.Normal(mp, lp.exp()), 1)
    torch.testing.assert_close(kl_diag_gaussians(mq, lq, mp, lp), torch.distributions.kl_divergence(q, p))


def test_paper_and_small_configs():
    paper = PUNetConfig()
    assert paper.filters == [64, 128, 256, 512] and paper.latent_dim == 6 and paper.n_fcomb == 3 and paper.beta == 1.0
    assert PUNetConfig.small().filters == [16, 32, 64, 128]
    model = PUNet(paper)
    assert model.posterior.encoder.layers[0].in_channels == 2  # image + label
    assert model.fcomb.layers[0].in_channels == 64 + 6
    assert isinstance(build_model("unet"), UNet) and UNetConfig().filters == [64, 128, 256, 512]


def test_prior_is_global_mean_then_1x1(tiny_punet):
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        mu, ls = tiny_punet.prior_params(x)
        pooled = tiny_punet.prior.trunk(x).mean(dim=(2, 3))
        out = F.conv2d(pooled[:, :, None, None], tiny_punet.prior.conv_layer.weight, tiny_punet.prior.conv_layer.bias)[:, :, 0, 0]
    torch.testing.assert_close(torch.cat([mu, ls], 1), out)


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown model 'punet-huge'"):
        build_model("punet-huge")
