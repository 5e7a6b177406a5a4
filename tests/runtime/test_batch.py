"""Batch segmentation: outputs, stacks, bad files, resume after a kill, order independence."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from probda_deploy.errors import ConfigError
from probda_deploy.runtime import OnnxBackend, segment


@pytest.fixture
def folder(tmp_path, blobs):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", (blobs((40, 45)) * 1000).astype(np.uint16))
    tifffile.imwrite(src / "b.tif", blobs((33, 30), seed=1))
    return src


def _files(path):
    return sorted(p.name for p in path.iterdir())


def test_outputs_types_and_shapes(punet_export, folder, tmp_path):
    out = tmp_path / "out"
    report = segment(punet_export, folder, out, samples=4, outputs="mask,prob,consensus,std,labels", device="cpu")
    assert report.done == 2 and not report.failed and report.providers == ["CPUExecutionProvider"]
    assert report.samples == 4 and report.images_per_second > 0
    kinds = ["consensus", "labels", "mask", "prob", "std"]
    assert _files(out) == sorted(f"{n}_{k}.tif" for n in "ab" for k in kinds)
    mask, prob, labels = (tifffile.imread(out / f"a_{k}.tif") for k in ("mask", "prob", "labels"))
    assert mask.dtype == np.uint8 and prob.dtype == np.float32 and labels.dtype == np.uint16
    assert mask.shape == prob.shape == (40, 45)
    np.testing.assert_array_equal(mask, (prob >= 0.5).astype(np.uint8))
    assert set(np.unique(labels[mask == 0])) == {0} and np.all(labels[mask == 1] > 0)
    assert tifffile.imread(out / "a_std.tif").dtype == np.float32


def test_stacks_are_segmented_slice_by_slice(punet_export, tmp_path, blobs):
    stack = np.stack([blobs((24, 28), seed=s) for s in range(3)])
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    sampler = OnnxBackend(punet_export, device="cpu")
    report = segment(sampler, tmp_path / "s.tif", tmp_path / "out", samples=3, outputs="prob,mask")
    assert report.done == 1
    prob = tifffile.imread(tmp_path / "out" / "s_prob.tif")
    assert prob.shape == (3, 24, 28)
    from probda_deploy.runtime import latent_eps

    one = sampler.predict(stack[1], eps=latent_eps(0, "s.tif", 3, 6, slice_index=1))
    np.testing.assert_allclose(prob[1], one["prob"], atol=1e-6)


def test_bad_files_fail_alone(punet_export, folder, tmp_path):
    (folder / "corrupt.tif").write_bytes(b"not a tiff at all")
    tifffile.imwrite(folder / "flat.tif", np.full((20, 20), 7, np.uint8))
    seen = []
    report = segment(
        punet_export, [folder, tmp_path / "missing.tif"], tmp_path / "out", samples=2, device="cpu", on_file=seen.append
    )
    assert report.done == 2 and len(report.failed) == 3 and len(seen) == 5
    errors = {r.path.name: r.error for r in report.failed}
    assert "not a readable image" in errors["corrupt.tif"]
    assert "image is constant" in errors["flat.tif"]
    assert "no such file or folder" in errors["missing.tif"]
    assert _files(tmp_path / "out") == sorted(f"{n}_{k}.tif" for n in "ab" for k in ("consensus", "mask", "prob", "std"))


def test_resume_after_a_kill(punet_export, folder, tmp_path):
    out = tmp_path / "out"
    segment(punet_export, folder, out, samples=3, device="cpu")
    reference = tifffile.imread(out / "b_prob.tif")
    # simulate a kill while b was being written: prob missing, a temp file left behind
    (out / "b_prob.tif").unlink()
    (out / ".b_prob.tif.x1y2z3.tmp").write_bytes(b"partial")
    with pytest.raises(ConfigError, match=r"already exist.*--resume.*--overwrite"):
        segment(punet_export, folder, out, samples=3, device="cpu")
    report = segment(punet_export, folder, out, samples=3, device="cpu", resume=True)
    assert [(r.path.name, r.status) for r in report.results] == [("a.tif", "skipped"), ("b.tif", "done")]
    assert _files(out) == sorted(f"{n}_{k}.tif" for n in "ab" for k in ("consensus", "mask", "prob", "std"))
    np.testing.assert_array_equal(tifffile.imread(out / "b_prob.tif"), reference)
    again = segment(punet_export, folder, out, samples=3, device="cpu", overwrite=True)
    assert again.done == 2


def test_results_do_not_depend_on_batch_composition(punet_export, folder, tmp_path):
    segment(punet_export, folder, tmp_path / "all", samples=4, seed=7, device="cpu")
    segment(punet_export, folder / "b.tif", tmp_path / "one", samples=4, seed=7, device="cpu")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "all" / "b_prob.tif"), tifffile.imread(tmp_path / "one" / "b_prob.tif"))


def test_option_errors(punet_export, folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown entropy; choose from mask,prob"):
        segment(punet_export, folder, tmp_path / "o", outputs="mask,entropy")
    with pytest.raises(ConfigError, match="choose one"):
        segment(punet_export, folder, tmp_path / "o", resume=True, overwrite=True)
    (folder / "sub").mkdir()
    tifffile.imwrite(folder / "sub" / "a.png.tif", np.zeros((4, 4), np.uint8))
    tifffile.imwrite(folder / "sub" / "a.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match=r"both would write"):
        segment(punet_export, [folder, folder / "sub"], tmp_path / "o")
