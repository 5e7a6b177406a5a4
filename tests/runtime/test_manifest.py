"""Manifest loading: verification, tampering, newer versions, non-export folders."""

from __future__ import annotations

import json
import shutil

import pytest

from probda_deploy.errors import RuntimeModelError
from probda_deploy.runtime import OnnxBackend, load_manifest
from probda_deploy.runtime.manifest import FORMAT_VERSION, write_manifest


@pytest.fixture
def copy(punet_export, tmp_path):
    dst = tmp_path / "m.probda"
    shutil.copytree(punet_export, dst)
    return dst


def test_load_manifest_returns_a_plain_dict(punet_export):
    m = load_manifest(punet_export)
    json.dumps(m)
    assert set(m["files"]) == {"encoder.onnx", "prior.onnx", "prior_head.onnx", "decoder.onnx"}


def test_tampered_file_is_refused(copy):
    with open(copy / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeModelError, match=r"decoder.onnx: sha256 does not match the manifest"):
        OnnxBackend(copy, device="cpu")
    load_manifest(copy, verify=False)  # reading without verification still works


def test_missing_file_is_refused(copy):
    (copy / "prior.onnx").unlink()
    with pytest.raises(RuntimeModelError, match=r"prior.onnx: missing from the export folder"):
        load_manifest(copy)


def test_newer_format_version_is_refused(copy):
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    write_manifest(copy, m)
    with pytest.raises(RuntimeModelError, match=r"newer than this probda supports.*upgrade probda"):
        load_manifest(copy)


def test_not_an_export_folder(tmp_path):
    with pytest.raises(RuntimeModelError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(RuntimeModelError, match="not an export folder"):
        load_manifest(tmp_path / "nope.probda")
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(RuntimeModelError, match="unreadable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(RuntimeModelError, match="not a probda ONNX manifest"):
        load_manifest(tmp_path)


def test_incomplete_manifest(copy):
    m = json.loads((copy / "manifest.json").read_text())
    del m["graphs"]["decoder"]
    write_manifest(copy, m)
    with pytest.raises(RuntimeModelError, match="names no decoder graph"):
        load_manifest(copy)
