"""Bad and unusual inputs through the real CLI (`probda segment`, `probda evaluate`, `probda train`).

Guarantee: every bad file gives one clear error line naming the file and the
problem, the batch goes on with the other files, the exit code is non-zero when
anything failed, and no partial or stray output is left (no temp files, no
outputs for a failed file). Valid unusual inputs (tiny, elongated, any dtype,
RGB, stacks) are segmented.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from probda_deploy.cli.app import app

from .conftest import blobs, labeled_folder, leftovers, write_tif

OUTS = ("mask", "prob")

# name -> (how to write it, expected fragment of its error line)
BAD = {
    "truncated": "not a readable image",
    "zero_bytes": "empty file (0 bytes)",
    "text": "not a readable image",
    "stack4d": "4D array",
    "nan": "NaN/inf",
    "inf": "NaN/inf",
    "constant": "constant",
    "one_by_one": "constant",  # a single pixel is necessarily constant
    "complex": "unsupported pixel type",
}
# name -> expected output shape
GOOD = {
    "u8": (24, 28), "u16": (24, 28), "i32": (24, 28), "f64": (24, 28),
    "tiny3x5": (3, 5), "elongated": (2, 300), "tall": (300, 2),
    "rgb": (24, 28), "rgba": (24, 28), "stack3d": (3, 20, 22),
    "rgb_minisblack": (24, 28),  # (H, W, 3) samples stored without the RGB tag: same rule as tagged RGB
    "blank_plane_stack": (3, 20, 22),  # one constant plane: the stack as a whole is valid
}


def _write_cases(folder: Path) -> None:
    folder.mkdir()
    img = blobs((24, 28), seed=1)
    scaled = (img - img.min()) / (img.max() - img.min())
    write_tif(folder / "u8.tif", (scaled * 255).astype(np.uint8))
    write_tif(folder / "u16.tif", (scaled * 60000).astype(np.uint16))
    write_tif(folder / "i32.tif", (scaled * 1e6 - 5e5).astype(np.int32))
    write_tif(folder / "f64.tif", img.astype(np.float64))
    write_tif(folder / "tiny3x5.tif", blobs((3, 5), seed=2))
    write_tif(folder / "elongated.tif", blobs((2, 300), seed=3))
    write_tif(folder / "tall.tif", blobs((300, 2), seed=4))
    rgb = (np.stack([scaled, scaled**2, 1 - scaled], -1) * 255).astype(np.uint8)
    tifffile.imwrite(folder / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(folder / "rgba.tif", np.concatenate([rgb, np.full_like(rgb[..., :1], 255)], -1), photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(folder / "stack3d.tif", np.stack([blobs((20, 22), seed=s) for s in range(3)]), photometric="minisblack")
    tifffile.imwrite(folder / "rgb_minisblack.tif", rgb, photometric="minisblack")
    blank = np.stack([blobs((20, 22), seed=s) for s in range(3)])
    blank[1] = 0
    tifffile.imwrite(folder / "blank_plane_stack.tif", blank, photometric="minisblack")
    # bad ones
    good_bytes = (folder / "u16.tif").read_bytes()
    (folder / "truncated.tif").write_bytes(good_bytes[: len(good_bytes) // 3])
    (folder / "zero_bytes.tif").write_bytes(b"")
    (folder / "text.tif").write_text("this is not an image\n")
    write_tif(folder / "stack4d.tif", np.random.default_rng(0).random((2, 2, 16, 16)).astype(np.float32))
    nan = img.copy()
    nan[3, 4] = np.nan
    write_tif(folder / "nan.tif", nan)
    inf = img.copy()
    inf[0, 0] = np.inf
    write_tif(folder / "inf.tif", inf)
    write_tif(folder / "constant.tif", np.full((24, 28), 7, np.uint16))
    write_tif(folder / "one_by_one.tif", np.ones((1, 1), np.float32))
    write_tif(folder / "complex.tif", (img + 1j * img).astype(np.complex64))
    # not images at all: must be ignored by folder expansion
    (folder / "notes.txt").write_text("ignore me")
    (folder / ".hidden.tif").write_bytes(b"junk")


@pytest.fixture(scope="module")
def batch(robust_export, tmp_path_factory):
    """One `probda segment` run over a folder mixing every bad case with valid unusual ones."""
    from typer.testing import CliRunner

    root = tmp_path_factory.mktemp("bad_batch")
    _write_cases(root / "in")
    out = root / "out"
    res = CliRunner().invoke(app, ["segment", str(robust_export), "-i", str(root / "in"), "-o", str(out),
                                   "-k", "2", "--outputs", ",".join(OUTS), "--quiet"])
    return res, out, root / "in"


def _error_lines(res) -> list[str]:
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


def test_batch_exit_code_and_summary(batch):
    res, _, _ = batch
    assert res.exit_code == 1, res.output
    assert f"{len(GOOD)} segmented, 0 skipped (resume), {len(BAD)} failed" in res.stdout, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_one_clear_error_line(batch, name):
    res, out, src = batch
    lines = [line for line in _error_lines(res) if f"{name}.tif" in line]
    assert len(lines) == 1, res.stderr
    assert str(src / f"{name}.tif") in lines[0] and BAD[name] in lines[0], lines[0]
    assert "Traceback" not in res.output
    assert not list(out.glob(f"{name}_*")), "a failed file must leave no output"


@pytest.mark.parametrize("name", sorted(GOOD))
def test_valid_unusual_image_is_segmented(batch, name):
    _, out, _ = batch
    mask = tifffile.imread(out / f"{name}_mask.tif")
    prob = tifffile.imread(out / f"{name}_prob.tif")
    assert mask.shape == GOOD[name] and prob.shape == GOOD[name]
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert np.isfinite(prob).all() and prob.min() >= 0 and prob.max() <= 1


def test_rgb_conversion_is_announced(batch):
    res, _, _ = batch
    assert "rgb.tif: RGB image converted to grayscale" in " ".join(res.stderr.split())


def test_no_partial_or_stray_outputs(batch):
    _, out, _ = batch
    assert leftovers(out) == []
    expected = {f"{n}_{k}.tif" for n in GOOD for k in OUTS}
    assert {p.name for p in out.iterdir()} == expected


def test_missing_input_and_empty_folder_fail_alone(robust_export, tmp_path, runner):
    good = tmp_path / "good"
    good.mkdir()
    write_tif(good / "a.tif", blobs((20, 20)))
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["segment", str(robust_export), "-i", str(good), "-i", str(empty), "-i", str(tmp_path / "nope.tif"),
                              "-o", str(tmp_path / "out"), "-k", "2", "--quiet"])
    assert res.exit_code == 1
    errors = _error_lines(res)
    assert any(str(empty) in e and "no images found" in e for e in errors), res.stderr
    assert any("nope.tif" in e and "no such file" in e for e in errors), res.stderr
    assert (tmp_path / "out" / "a_mask.tif").is_file()


def test_only_empty_folder_exits_non_zero(robust_export, tmp_path, runner):
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["segment", str(robust_export), str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--quiet"])
    assert res.exit_code == 1
    assert "no images found" in res.stderr
    assert not any((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_symlink_loop_and_dangling_link(robust_export, tmp_path, runner):
    src = tmp_path / "in"
    src.mkdir()
    write_tif(src / "a.tif", blobs((20, 20)))
    os.symlink(src / "loop2.tif", src / "loop1.tif")
    os.symlink(src / "loop1.tif", src / "loop2.tif")
    os.symlink(tmp_path / "gone.tif", src / "dangling.tif")
    os.symlink(src, src / "self_dir")  # a folder pointing at itself must not recurse forever
    res = runner.invoke(app, ["segment", str(robust_export), str(src), "-o", str(tmp_path / "out"), "-k", "2", "--quiet"])
    assert res.exit_code == 1, res.output
    errors = _error_lines(res)
    for name in ("loop1.tif", "loop2.tif", "dangling.tif"):
        assert sum(name in e for e in errors) == 1, res.stderr
    assert "1 segmented" in res.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_consensus.tif", "a_mask.tif", "a_prob.tif", "a_std.tif"]


def test_unreadable_file(robust_export, tmp_path, runner):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading, so the case cannot be produced")
    src = tmp_path / "in"
    src.mkdir()
    write_tif(src / "a.tif", blobs((20, 20)))
    write_tif(src / "locked.tif", blobs((20, 20), seed=5))
    os.chmod(src / "locked.tif", 0)
    try:
        res = runner.invoke(app, ["segment", str(robust_export), str(src), "-o", str(tmp_path / "out"), "-k", "2", "--quiet"])
    finally:
        os.chmod(src / "locked.tif", 0o644)
    assert res.exit_code == 1
    assert any("locked.tif" in e and "permission denied" in e for e in _error_lines(res))
    assert not list((tmp_path / "out").glob("locked_*"))


def test_unreadable_output_folder_is_one_error(robust_export, tmp_path, runner):
    """An output path that is a file (works as root too) gives one clear error, not a traceback."""
    src = tmp_path / "in"
    src.mkdir()
    write_tif(src / "a.tif", blobs((20, 20)))
    (tmp_path / "out").write_text("a file, not a folder")
    res = runner.invoke(app, ["segment", str(robust_export), str(src), "-o", str(tmp_path / "out"), "-k", "2", "--quiet"])
    assert res.exit_code != 0
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert f"{tmp_path / 'out'}: cannot create the output folder" in " ".join(res.stderr.split())


@pytest.fixture
def labeled(tmp_path):
    """images/ + labels/ with one good pair and each label problem."""
    img_dir, lab_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    lab_dir.mkdir()
    for i, name in enumerate(("good", "mismatch", "negative", "nolabel", "floatlabel")):
        img = blobs((32, 32), seed=10 + i)
        write_tif(img_dir / f"{name}.tif", img)
        lab = (img > 0.5).astype(np.int32)
        if name == "mismatch":
            lab = lab[:, :20]
        if name == "negative":
            lab[0, 0] = -3
        if name == "floatlabel":
            lab = lab.astype(np.float32) + 0.5
        if name != "nolabel":
            write_tif(lab_dir / f"{name}.tif", lab)
    return img_dir, lab_dir


LABEL_PROBLEMS = {"mismatch": "shape", "negative": "negative values", "nolabel": "no label", "floatlabel": "non-integer"}


def test_evaluate_label_problems(robust_export, labeled, tmp_path, runner):
    img_dir, lab_dir = labeled
    res = runner.invoke(app, ["evaluate", str(robust_export), "-i", str(img_dir), "-l", str(lab_dir), "-k", "2",
                              "--out", str(tmp_path / "eval"), "--quiet"])
    assert res.exit_code == 1, res.output
    errors = _error_lines(res)
    flat = " ".join(res.stderr.split())
    for name, problem in LABEL_PROBLEMS.items():
        hits = [e for e in errors if f"{name}.tif" in e]
        assert len(hits) == 1, (name, res.stderr)
        assert problem in flat.split(f"{name}.tif", 1)[1].split("error:")[0], (name, res.stderr)
    assert "1 evaluated, 4 failed" in " ".join(res.stdout.split())
    assert "Traceback" not in res.output
    assert leftovers(tmp_path / "eval") == []


def test_train_bad_label_is_one_clear_error(labeled, tmp_path, runner):
    img_dir, lab_dir = labeled
    for name in ("good", "nolabel", "negative", "floatlabel"):
        (img_dir / f"{name}.tif").unlink()
    res = runner.invoke(app, ["train", "-i", str(img_dir), "-l", str(lab_dir), "-o", str(tmp_path / "run"), "--model", "unet-small",
                              "--iterations", "1", "--patch-size", "16", "--batch-size", "1", "--device", "cpu", "--quiet"])
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    flat = " ".join(res.stderr.split())
    assert "mismatch.tif" in flat and "shape" in flat, res.stderr
    assert not (tmp_path / "run" / "best.pt").exists()
    assert leftovers(tmp_path) == []


# train/adapt: every unusable file is reported before anything is trained; nothing is written
TRAIN_BAD = {"truncated": "not a readable image", "nan": "NaN/inf", "constant": "constant", "stack4d": "4D array",
             "mismatch": "shape", "nolabel": "no label file found"}


def _training_folder(root: Path) -> tuple[Path, Path]:
    img_dir, lab_dir = labeled_folder(root, 3, seed=20)
    good = (img_dir / "good0.tif").read_bytes()
    (img_dir / "truncated.tif").write_bytes(good[: len(good) // 3])
    nan = blobs((32, 32), seed=30)
    nan[5, 5] = np.nan
    write_tif(img_dir / "nan.tif", nan)
    write_tif(img_dir / "constant.tif", np.zeros((32, 32), np.uint8))
    write_tif(img_dir / "stack4d.tif", np.ones((2, 2, 32, 32), np.float32))
    write_tif(img_dir / "mismatch.tif", blobs((32, 32), seed=31))
    write_tif(img_dir / "nolabel.tif", blobs((32, 32), seed=32))
    for name in ("truncated", "nan", "constant", "stack4d"):
        write_tif(lab_dir / f"{name}.tif", np.zeros((32, 32), np.uint8))
    write_tif(lab_dir / "mismatch.tif", np.zeros((16, 32), np.uint8))
    return img_dir, lab_dir


def _assert_each_reported(res, folder: Path, cases: dict[str, str]) -> None:
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    errors = _error_lines(res)
    for name, fragment in cases.items():
        hits = [e for e in errors if f"{folder / name}.tif" in e]
        assert len(hits) == 1 and fragment in hits[0], (name, res.stderr)


def test_train_reports_every_unusable_file_and_writes_nothing(tmp_path, runner):
    img_dir, lab_dir = _training_folder(tmp_path)
    args = ["train", "-i", str(img_dir), "-l", str(lab_dir), "-o", str(tmp_path / "run"), "--model", "unet-small",
            "--iterations", "1", "--patch-size", "16", "--batch-size", "1", "--device", "cpu", "--quiet"]
    res = runner.invoke(app, args)
    # missing labels are found first (pairing), then every unreadable pair is listed
    _assert_each_reported(res, img_dir, {"nolabel": TRAIN_BAD["nolabel"]})
    assert not (tmp_path / "run").exists()
    (img_dir / "nolabel.tif").unlink()
    res = runner.invoke(app, args)
    bad = {k: v for k, v in TRAIN_BAD.items() if k not in ("nolabel", "mismatch")}
    _assert_each_reported(res, img_dir, bad)
    assert sum(f"{lab_dir / 'mismatch.tif'}" in e and "shape" in e for e in _error_lines(res)) == 1, res.stderr
    assert "5 of 8 image/label pairs cannot be used" in " ".join(res.stderr.split()), res.stderr
    assert not (tmp_path / "run").exists()
    assert leftovers(tmp_path) == []


def test_adapt_reports_every_unusable_target_image_and_writes_nothing(robust_ckpt, tmp_path, runner):
    target = tmp_path / "target"
    target.mkdir()
    for i in range(3):
        write_tif(target / f"good{i}.tif", blobs((32, 32), seed=40 + i))
    good = (target / "good0.tif").read_bytes()
    (target / "truncated.tif").write_bytes(good[: len(good) // 2])
    (target / "zero_bytes.tif").write_bytes(b"")
    (target / "text.tif").write_text("not an image")
    inf = blobs((32, 32), seed=43)
    inf[0, 0] = np.inf
    write_tif(target / "inf.tif", inf)
    write_tif(target / "constant.tif", np.full((32, 32), 3.0, np.float32))
    res = runner.invoke(app, ["adapt", str(robust_ckpt), "-t", str(target), "-o", str(tmp_path / "run"), "--iterations", "1",
                              "--patch-size", "16", "--batch-size", "1", "--samples", "2", "--device", "cpu", "--quiet"])
    _assert_each_reported(res, target, {"truncated": "not a readable image", "zero_bytes": "empty file", "text": "not a readable image",
                                        "inf": "NaN/inf", "constant": "constant"})
    assert "5 of 8 images cannot be used" in " ".join(res.stderr.split()), res.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_evaluate_bad_images(robust_export, tmp_path, runner):
    img_dir, lab_dir = labeled_folder(tmp_path, 2, seed=50)
    good = (img_dir / "good0.tif").read_bytes()
    (img_dir / "truncated.tif").write_bytes(good[: len(good) // 3])
    (img_dir / "zero_bytes.tif").write_bytes(b"")
    nan = blobs((32, 32), seed=52)
    nan[1, 1] = np.nan
    write_tif(img_dir / "nan.tif", nan)
    for name in ("truncated", "zero_bytes", "nan"):
        write_tif(lab_dir / f"{name}.tif", np.zeros((32, 32), np.uint8))
    res = runner.invoke(app, ["evaluate", str(robust_export), "-i", str(img_dir), "-l", str(lab_dir), "-k", "2",
                              "--out", str(tmp_path / "eval"), "--quiet"])
    _assert_each_reported(res, img_dir, {"truncated": "not a readable image", "zero_bytes": "empty file", "nan": "NaN/inf"})
    assert "2 evaluated, 3 failed" in " ".join(res.stdout.split())
    assert leftovers(tmp_path / "eval") == []
