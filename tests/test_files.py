"""files.py: atomic writes leave the old file or the new one, never half of either; sha256."""

from __future__ import annotations

import hashlib

import pytest

from probda_deploy.files import atomic_path, replace_dir, sha256_file, write_text_atomic


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.name.startswith(".a.txt.") and tmp.suffix == ".png"
        tmp.write_text("new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) != 0o600


def test_replace_dir_and_sha256(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x").write_bytes(b"abc")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale").write_bytes(b"")
    out = replace_dir(tmp_path / "new", tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["x"] and not (tmp_path / "new").exists()
    assert sha256_file(out / "x") == hashlib.sha256(b"abc").hexdigest()
