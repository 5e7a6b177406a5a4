import os

import pytest
import torch

from probda_deploy.errors import CheckpointError
from probda_deploy.models.checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_checkpoint


def test_round_trip_rebuilds_the_same_model(tiny_punet, tmp_path):
    path = save_checkpoint(make_checkpoint(tiny_punet, iteration=7, metrics={"val_dice": 0.5}), tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["format"] == "probda-checkpoint" and raw["iteration"] == 7
    model = model_from_checkpoint(path)
    x, eps = torch.randn(1, 1, 24, 24), torch.randn(2, 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.sample_logits(x, eps=eps), tiny_punet.sample_logits(x, eps=eps))


@pytest.mark.parametrize("key", ["ema_state_dict", "teacher_state_dict"])  # the latter: checkpoints of earlier versions
def test_ema_weights_are_deployed_when_present(tiny_punet, tmp_path, key):
    ema = {k: torch.zeros_like(v) for k, v in tiny_punet.state_dict().items()}
    path = save_checkpoint(make_checkpoint(tiny_punet, **{key: ema}), tmp_path / "m.pt")
    assert all((p == 0).all() for p in model_from_checkpoint(path).parameters())
    assert all((p == 0).all() for p in model_from_checkpoint(path, ema=True).parameters())
    assert not all((p == 0).all() for p in model_from_checkpoint(path, ema=False).parameters())


def test_asking_for_ema_weights_of_a_source_checkpoint_is_an_error(tiny_punet, tmp_path):
    path = save_checkpoint(make_checkpoint(tiny_punet), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="has no EMA weights"):
        model_from_checkpoint(path, ema=True)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/probda_pwned_marker",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = "/tmp/probda_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "probda-checkpoint", "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_not_a_checkpoint_and_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model_state": {}}, tmp_path / "ref.pt")
    with pytest.raises(CheckpointError, match="probda import"):
        load_checkpoint(tmp_path / "ref.pt")


def test_newer_format_version_is_refused(tiny_punet, tmp_path):
    path = save_checkpoint(make_checkpoint(tiny_punet, format_version=99), tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer than this probda"):
        load_checkpoint(path)


def test_atomic_write_leaves_no_temp_files(tiny_punet, tmp_path):
    save_checkpoint(make_checkpoint(tiny_punet), tmp_path / "a.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
