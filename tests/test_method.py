"""The method's shared numerics (probda_deploy.method): one consensus rule on numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probda_deploy.errors import ConfigError
from probda_deploy.method import (check_choice, check_thresholds, consensus, consensus_spec, filter_weights, latent_eps,
                                  reduce_samples, standardize)


def _stack(*cols):
    """(K, P) sample stack from per-pixel columns of K probabilities."""
    return np.array(cols, dtype=np.float32).T


COLUMNS = _stack(
    [0.95, 0.97, 0.99, 0.92],  # all confident foreground
    [0.02, 0.05, 0.01, 0.03],  # all confident background
    [0.95, 0.95, 0.95, 0.02],  # mean 0.72 (fg): 3 agree, 1 confidently disagrees
    [0.5, 0.6, 0.95, 0.05],    # mean 0.525: unsure samples
)


@pytest.mark.parametrize("wrap", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
def test_agree_and_confident_differ_exactly_where_samples_confidently_disagree(wrap):
    agree = np.asarray(consensus(wrap(COLUMNS), rule="agree"))
    conf = np.asarray(consensus(wrap(COLUMNS), rule="confident"))
    np.testing.assert_array_equal(agree, [1.0, 1.0, 0.75, 0.25])
    np.testing.assert_array_equal(conf, [1.0, 1.0, 1.0, 0.5])
    assert agree.dtype == conf.dtype == np.float32


def test_numpy_and_torch_give_the_same_maps():
    # multiples of 1/64: every sum is exact, so the means (and the classes they give) agree bit for bit
    probs = np.random.default_rng(0).integers(0, 65, (16, 40, 30)).astype(np.float32) / 64
    a = reduce_samples(probs, rule="agree", high=0.8, low=0.2)
    b = {k: v.numpy() for k, v in reduce_samples(torch.from_numpy(probs), rule="agree", high=0.8, low=0.2).items()}
    np.testing.assert_array_equal(a["prob"], b["prob"])
    np.testing.assert_array_equal(a["consensus"], b["consensus"])
    np.testing.assert_allclose(a["std"], b["std"], atol=1e-6)
    np.testing.assert_allclose(a["std"], probs.std(axis=0), atol=1e-6)


def test_thresholds_are_parameters():
    probs = np.array([0.85, 0.86], np.float32)[:, None]
    assert consensus(probs)[0] == 0
    assert consensus(probs, high=0.8)[0] == 1


@pytest.mark.parametrize("wrap", [np.asarray, torch.from_numpy], ids=["numpy", "torch"])
def test_filters(wrap):
    c = wrap(np.array([1.0, 0.75, 0.0], np.float32))
    np.testing.assert_array_equal(np.asarray(filter_weights(c, "masking")), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(filter_weights(c, "weighting")), [1.0, 0.75, 0.0])
    np.testing.assert_array_equal(np.asarray(filter_weights(c, "none")), [1.0, 1.0, 1.0])
    with pytest.raises(ConfigError, match="--filter 'bogus': unknown; choose one of masking, weighting, none"):
        filter_weights(c, "bogus")


def test_bad_values_raise_one_error_type():
    with pytest.raises(ConfigError, match="consensus rule 'vote': unknown; choose one of agree, confident"):
        consensus(np.zeros((2, 1)), rule="vote")
    with pytest.raises(ConfigError, match="need 0 <= low < 0.5 < high <= 1"):
        check_thresholds(0.4, 0.1)
    with pytest.raises(ConfigError, match="--consensus-rule 'x'"):
        consensus_spec("x")
    assert check_choice("--device", "cpu", ("auto", "cpu")) == "cpu"


def test_standardize_and_seed_rule():
    x = np.arange(12, dtype=np.uint16).reshape(3, 4)
    s = standardize(x)
    assert s.dtype == np.float32 and abs(float(s.mean())) < 1e-6 and abs(float(s.std()) - 1) < 1e-5
    a = latent_eps(0, "dir/img_01.tif", 16, 6)
    np.testing.assert_array_equal(a, latent_eps(0, "/other/img_01.tif", 16, 6))
    np.testing.assert_array_equal(a[:4], latent_eps(0, "img_01.tif", 4, 6))


def test_only_method_spells_out_the_vocabulary():
    """Outside method.py no tuple, list or set literal restates one of the method's vocabularies whole."""
    import ast
    from pathlib import Path

    import probda_deploy
    from probda_deploy import method

    vocabularies = [set(v) for k, v in vars(method).items() if k.isupper() and isinstance(v, tuple) and len(v) > 1]
    root = Path(probda_deploy.__file__).parent
    hits = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "method.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if any(v <= names for v in vocabularies):
                    hits.append(f"{path.relative_to(root)}:{node.lineno} {sorted(names)}")
    assert hits == []
