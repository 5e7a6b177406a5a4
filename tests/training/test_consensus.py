import pytest
import torch

from probda_deploy.models.consensus import consensus_response, filter_weights


def _stack(*cols):
    """(K, 1, P) sample stack from per-pixel columns of K probabilities."""
    return torch.tensor(cols, dtype=torch.float32).T[:, None, :]


def test_agree_and_confident_differ_exactly_where_samples_confidently_disagree():
    samples = _stack(
        [0.95, 0.97, 0.99, 0.92],  # all confident foreground
        [0.02, 0.05, 0.01, 0.03],  # all confident background
        [0.95, 0.95, 0.95, 0.02],  # mean 0.72 (fg): 3 agree, 1 confidently disagrees
        [0.5, 0.6, 0.95, 0.05],    # mean 0.525: unsure samples
    )
    agree = consensus_response(samples, rule="agree")[0]
    conf = consensus_response(samples, rule="confident")[0]
    torch.testing.assert_close(agree, torch.tensor([1.0, 1.0, 0.75, 0.25]))
    torch.testing.assert_close(conf, torch.tensor([1.0, 1.0, 1.0, 0.5]))
    diff = (agree != conf).nonzero().flatten().tolist()
    assert diff == [2, 3]  # only where some confident sample contradicts the pseudo-label's class


def test_thresholds_are_parameters():
    samples = _stack([0.85, 0.86, 0.87])
    assert consensus_response(samples)[0].item() == 0.0
    assert consensus_response(samples, upper=0.8)[0].item() == 1.0


def test_filters():
    c = torch.tensor([1.0, 0.75, 0.0])
    torch.testing.assert_close(filter_weights(c, "masking"), torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(filter_weights(c, "weighting"), c)
    torch.testing.assert_close(filter_weights(c, "none"), torch.ones(3))
    with pytest.raises(ValueError, match="unknown filter"):
        filter_weights(c, "bogus")
