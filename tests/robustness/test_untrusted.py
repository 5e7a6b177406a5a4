"""Untrusted files: pickles that would run code, modified exports, zip-slip packages, newer formats.

Guarantee: probda never executes code from a model file; a checkpoint is read
with weights_only=True and a code-running pickle is refused with a clear message
by every command that loads checkpoints; an export folder whose files do not
match the sha256 in its manifest, or whose format version is newer than this
probda, is refused; a package with absolute or `..` zip members is refused
before anything is unpacked.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from probda_deploy.cli.app import app

from .conftest import labeled_folder, leftovers


class _Payload:
    """Unpickling this object would create `marker` (if probda ever unpickled it unsafely)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.fixture
def evil_ckpt(tmp_path) -> tuple[Path, Path]:
    """A torch file that looks like a probda checkpoint but pickles a code-running object."""
    import torch

    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    torch.save({"format": "probda-checkpoint", "format_version": 1, "state_dict": {}, "payload": _Payload(marker)}, path)
    return path, marker


@pytest.fixture
def small_data(tmp_path):
    return labeled_folder(tmp_path, 2, prefix="im")


def _commands(ckpt: Path, data, tmp: Path) -> dict[str, list[str]]:
    img_dir, lab_dir = data
    return {
        "info": ["info", str(ckpt)],
        "export-onnx": ["export", str(ckpt), "--format", "onnx", "-o", str(tmp / "x.probda"), "--quiet"],
        "export-bioimageio": ["export", str(ckpt), "--format", "bioimageio", "-o", str(tmp / "x.zip"), "--quiet"],
        "segment": ["segment", str(ckpt), str(img_dir), "-o", str(tmp / "seg"), "--quiet"],
        "evaluate": ["evaluate", str(ckpt), "-i", str(img_dir), "-l", str(lab_dir), "--quiet"],
        "adapt": ["adapt", str(ckpt), "-t", str(img_dir), "-o", str(tmp / "adapt"), "--iterations", "1", "--device", "cpu", "--quiet"],
        "import": ["import", str(ckpt), "-o", str(tmp / "imported.pt")],
    }


@pytest.mark.parametrize("command", ["info", "export-onnx", "export-bioimageio", "segment", "evaluate", "adapt", "import"])
def test_code_running_pickle_is_refused(command, evil_ckpt, small_data, tmp_path, runner):
    ckpt, marker = evil_ckpt
    res = runner.invoke(app, _commands(ckpt, small_data, tmp_path)[command])
    assert not marker.exists(), f"{command}: the pickle's payload was executed"
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    flat = " ".join(res.stderr.split())
    assert str(ckpt) in flat, res.output
    if command != "import":  # import reads inertly and reports what it could not find instead
        assert "refused to load" in flat and "could run code" in flat, res.output
    for produced in ("x.probda", "x.zip", "seg", "imported.pt"):
        assert not (tmp_path / produced).exists() or not any((tmp_path / produced).iterdir()), produced
    assert not (tmp_path / "adapt" / "best.pt").exists()
    assert leftovers(tmp_path) == []


@pytest.fixture
def export_copy(robust_export, tmp_path) -> Path:
    folder = tmp_path / "copy.probda"
    shutil.copytree(robust_export, folder)
    return folder


def _tamper(folder: Path) -> Path:
    graph = sorted(folder.glob("*.onnx"))[0]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return graph


def test_modified_export_file_is_refused(export_copy, small_data, tmp_path, runner):
    graph = _tamper(export_copy)
    img_dir, lab_dir = small_data
    for args in (["segment", str(export_copy), str(img_dir), "-o", str(tmp_path / "seg"), "--quiet"],
                 ["info", str(export_copy)],
                 ["evaluate", str(export_copy), "-i", str(img_dir), "-l", str(lab_dir), "--quiet"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args[0], res.output)
        flat = " ".join(res.stderr.split())
        assert f"{graph}: sha256 does not match the manifest" in flat, (args[0], res.output)
    assert not (tmp_path / "seg").exists()


def test_manifest_listing_a_file_outside_the_folder_is_refused(export_copy, tmp_path, runner):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["files"]["../outside.onnx"] = "0" * 64
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    res = runner.invoke(app, ["info", str(export_copy)])
    assert res.exit_code == 1
    assert "outside the folder" in " ".join(res.stderr.split())


def test_newer_export_format_is_refused(export_copy, small_data, tmp_path, runner):
    manifest = json.loads((export_copy / "manifest.json").read_text())
    manifest["format_version"] = manifest["format_version"] + 1
    (export_copy / "manifest.json").write_text(json.dumps(manifest))
    for args in (["segment", str(export_copy), str(small_data[0]), "-o", str(tmp_path / "seg"), "--quiet"], ["info", str(export_copy)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        flat = " ".join(res.stderr.split())
        assert "is newer than this probda supports" in flat and "upgrade probda" in flat, res.output


def test_newer_checkpoint_format_is_refused(robust_ckpt, tmp_path, runner):
    import torch

    ckpt = torch.load(robust_ckpt, weights_only=True)
    ckpt["format_version"] = int(ckpt["format_version"]) + 1
    path = tmp_path / "future.pt"
    torch.save(ckpt, path)
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 1
    assert "newer than this probda supports" in " ".join(res.stderr.split())


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/probda_abs_evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_zip_slip_package_is_refused(member, tmp_path, runner):
    pkg = tmp_path / "pkg" / "model.zip"
    pkg.parent.mkdir()
    with zipfile.ZipFile(pkg, "w") as zf:
        zf.writestr("rdf.yaml", "format_version: 0.5.4\ntype: model\n")
        zf.writestr(member, "evil")
    res = runner.invoke(app, ["validate", str(pkg)])
    assert res.exit_code == 1, res.output
    flat = " ".join(res.stderr.split())
    assert f"{pkg}: unsafe member name '{member}'" in flat, res.output
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/probda_abs_evil.txt").exists()


def test_not_a_zip_is_one_clear_error(tmp_path, runner):
    pkg = tmp_path / "model.zip"
    pkg.write_text("not a zip")
    res = runner.invoke(app, ["validate", str(pkg)])
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert str(pkg) in " ".join(res.stderr.split())


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, robust_ckpt, runner):
    path = tmp_path / "cut.pt"
    data = robust_ckpt.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for args in (["info", str(path)], ["export", str(path), "-o", str(tmp_path / "x.probda"), "--quiet"]):
        res = runner.invoke(app, args)
        assert res.exit_code == 1, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        assert f"{path}: not a readable checkpoint" in " ".join(res.stderr.split()), res.output
