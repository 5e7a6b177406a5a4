"""OME-Zarr output of large images: equality with the in-memory tiled result, NGFF metadata, resume, chunked inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from probda_deploy.errors import ConfigError, ImageReadError
from probda_deploy.data.io import read_image
from probda_deploy.runtime import OnnxBackend, latent_eps, segment
from probda_deploy.runtime import ome_zarr as oz
from probda_deploy.runtime.readers import open_image


def synthetic(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A cheap, position-defined image: discs on a lattice plus hashed noise (float32)."""
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    discs = (((yy % 97) - 48) ** 2 + ((xx % 83) - 41) ** 2 < 400).astype(np.float32)
    noise = ((yy * 7919 + xx * 104729) % 1009).astype(np.float32) / 1009.0
    return discs + 0.3 * noise


def write_input(path: Path, shape: tuple[int, int], chunk: int = 1024) -> Path:
    """A zarr array filled chunk by chunk: the whole image is never in memory."""
    arr = zarr.open_array(str(path), mode="w", shape=shape, chunks=(chunk, chunk), dtype="float32")
    for y in range(0, shape[0], chunk):
        for x in range(0, shape[1], chunk):
            ys, xs = np.arange(y, min(y + chunk, shape[0])), np.arange(x, min(x + chunk, shape[1]))
            arr[y : y + len(ys), x : x + len(xs)] = synthetic(ys, xs)
    return path


@pytest.fixture(scope="module")
def sampler(punet_export):
    return OnnxBackend(punet_export, device="cpu")


def _run(sampler, src, out, *, tile, seed=0, k=4, ngff="0.4", resume=False, on_block=None):
    """Segment `src` into `out` (OME-Zarr); {"blocks", "written", "levels"}; a failed file raises ConfigError."""
    report = segment(sampler, src, out.parent, fmt="ome-zarr", samples=k, seed=seed, tile=tile, ngff=ngff,
                     resume=resume, on_progress=on_block)
    (result,) = report.results
    if result.status == "failed":
        raise ConfigError(result.error)
    assert result.outputs == (out,)
    written, blocks = result.blocks
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    levels = len(attrs.get("ome", attrs)["multiscales"][0]["datasets"])
    return {"blocks": blocks, "written": written, "levels": levels}


def _check_ngff(out: Path, shape, levels, ngff="0.4"):
    root = zarr.open_group(str(out), mode="r")
    attrs = dict(root.attrs)
    if ngff == "0.5":
        assert attrs["ome"]["version"] == "0.5"
        attrs = attrs["ome"]
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"] and ms["axes"][0]["type"] == "channel"
    assert [d["path"] for d in ms["datasets"]] == [str(i) for i in range(levels)]
    for i, d in enumerate(ms["datasets"]):
        assert d["coordinateTransformations"] == [{"type": "scale", "scale": [1.0, 2.0**i, 2.0**i]}]
        assert root[str(i)].shape == (3, -(-shape[0] // 2**i), -(-shape[1] // 2**i))
    assert [c["label"] for c in attrs["omero"]["channels"]] == ["prob", "consensus", "std"]
    mask_group = root["labels/mask"]
    mask_attrs = dict(mask_group.attrs).get("ome", dict(mask_group.attrs))
    assert mask_attrs["image-label"]["source"]["image"] == "../../"
    return root


def test_tiled_zarr_equals_in_memory(sampler, tmp_path):
    shape = (1024, 776)
    src = write_input(tmp_path / "big.zarr", shape, chunk=512)
    out = tmp_path / "big.ome.zarr"
    info = _run(sampler, src, out, tile=384, seed=5)
    assert info["blocks"] == 9 and info["written"] == 9 and not oz.partial_path(out).exists()
    root = _check_ngff(out, shape, info["levels"])
    assert root["0"].chunks == (1, 384, 384) and root["1"].chunks == (1, 192, 192)
    image = np.asarray(open_image(src)[:])
    ref = sampler.predict(image, eps=latent_eps(5, "big.zarr", 4, sampler.latent_dim), tile=384)
    level0 = root["0"][:]
    for i, name in enumerate(("prob", "consensus", "std")):
        np.testing.assert_array_equal(level0[i], ref[name])
    np.testing.assert_array_equal(root["labels/mask/0"][:], (ref["prob"] >= 0.5).astype(np.uint8))
    # level 1 is the 2x2 mean of level 0 (edge-padded), mask is nearest
    np.testing.assert_allclose(root["1"][0], oz._halve_mean(ref["prob"][None])[0], atol=1e-6)
    np.testing.assert_array_equal(root["labels/mask/1"][:], root["labels/mask/0"][::2, ::2])
    assert dict(root.attrs)["probda"]["settings"]["seed"] == 5 and not (out / oz.MARKERS).exists()


def test_ome_zarr_library_reads_output(sampler, tmp_path):
    reader = pytest.importorskip("ome_zarr.reader")
    from ome_zarr.io import parse_url

    tifffile.imwrite(tmp_path / "img.tif", synthetic(np.arange(300), np.arange(280)))
    out = tmp_path / "img.ome.zarr"
    _run(sampler, tmp_path / "img.tif", out, tile=128)
    nodes = list(reader.Reader(parse_url(str(out)))())
    image = nodes[0]
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    assert image.data[0].shape == (3, 300, 280) and len(image.data) == 2
    mask = [n for n in nodes if n.metadata.get("name") == "mask"][0]
    assert mask.data[0].shape == (300, 280) and mask.data[0].dtype == np.uint8


def test_ngff_05_zarr_v3(sampler, tmp_path):
    tifffile.imwrite(tmp_path / "v3.tif", synthetic(np.arange(200), np.arange(260)))
    out = tmp_path / "v3.ome.zarr"
    info = _run(sampler, tmp_path / "v3.tif", out, tile=None, ngff="0.5")
    assert json.loads((out / "zarr.json").read_text())["zarr_format"] == 3
    _check_ngff(out, (200, 260), info["levels"], ngff="0.5")


def test_stack_matches_in_memory_slices(sampler, tmp_path):
    stack = np.stack([synthetic(np.arange(120) + 30 * z, np.arange(100)) for z in range(2)])
    tifffile.imwrite(tmp_path / "st.tif", stack, compression="zlib", tile=(64, 64))
    out = tmp_path / "st.ome.zarr"
    _run(sampler, tmp_path / "st.tif", out, tile=64, seed=2)
    root = zarr.open_group(str(out), mode="r")
    assert root["0"].shape == (3, 2, 120, 100)
    for z in range(2):
        ref = sampler.predict(stack[z], eps=latent_eps(2, "st.tif", 4, sampler.latent_dim, slice_index=z), tile=64)
        np.testing.assert_array_equal(root["0"][0, z], ref["prob"])
        np.testing.assert_array_equal(root["0"][2, z], ref["std"])


class Killed(Exception):
    pass


def test_resume_redoes_only_missing_blocks(sampler, tmp_path):
    src = write_input(tmp_path / "r.zarr", (512, 480), chunk=256)
    full = tmp_path / "full" / "r.ome.zarr"
    _run(sampler, src, full, tile=128, seed=1)
    out = tmp_path / "cut" / "r.ome.zarr"

    def kill_after_5(done, total):  # progress counts the 16 prior tiles, then the 16 blocks
        if done == 16 + 5:
            raise Killed

    with pytest.raises(Killed):
        _run(sampler, src, out, tile=128, seed=1, on_block=kill_after_5)
    partial = oz.partial_path(out)
    assert partial.is_dir() and not out.exists() and len(oz.done_blocks(partial)) == 5
    with pytest.raises(ConfigError, match="other settings"):
        _run(sampler, src, out, tile=128, seed=2, resume=True)
    info = _run(sampler, src, out, tile=128, seed=1, resume=True)
    assert info["written"] == info["blocks"] - 5 == 16 - 5
    a, b = zarr.open_group(str(full), mode="r"), zarr.open_group(str(out), mode="r")
    for lvl in range(info["levels"]):
        np.testing.assert_array_equal(a[str(lvl)][:], b[str(lvl)][:])
        np.testing.assert_array_equal(a[f"labels/mask/{lvl}"][:], b[f"labels/mask/{lvl}"][:])


def test_a_block_that_cannot_be_stored_fails_the_file(sampler, tmp_path, monkeypatch):
    """Blocks are stored on a thread while the next is predicted: a write error still fails the file, blocks
    stored before it keep their markers, and no finished output appears."""
    src = write_input(tmp_path / "w.zarr", (512, 480), chunk=256)
    out = tmp_path / "o" / "w.ome.zarr"
    write_block, calls = oz.write_block, []

    def disk_full_at_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        write_block(*args, **kwargs)

    monkeypatch.setattr(oz, "write_block", disk_full_at_third)
    with pytest.raises(ConfigError, match="No space left on device"):
        _run(sampler, src, out, tile=128, seed=1)
    assert not out.exists() and len(oz.done_blocks(oz.partial_path(out))) == 2


def test_chunked_inputs(tmp_path):
    img = synthetic(np.arange(130), np.arange(150))
    tifffile.imwrite(tmp_path / "plain.tif", img)
    tifffile.imwrite(tmp_path / "tiled.tif", img, tile=(64, 64), compression="zlib")
    assert isinstance(open_image(tmp_path / "plain.tif").array, np.memmap)
    np.testing.assert_array_equal(open_image(tmp_path / "tiled.tif")[10:70, 20:90], img[10:70, 20:90])
    z = zarr.open_array(str(tmp_path / "t.zarr"), mode="w", shape=(1, 1, 130, 150), chunks=(1, 1, 64, 64), dtype="float32")
    z[0, 0] = img
    view = open_image(tmp_path / "t.zarr")
    assert view.shape == (130, 150)
    np.testing.assert_array_equal(view[5:9, 7:11], img[5:9, 7:11])
    rgb = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    gray = open_image(tmp_path / "rgb.tif")
    assert gray.shape == (20, 24)
    np.testing.assert_allclose(gray[3:9, 2:20], read_image(tmp_path / "rgb.tif")[3:9, 2:20], rtol=1e-6)
    tifffile.imwrite(tmp_path / "stack4d.tif", np.ones((2, 2, 8, 8), np.float32))
    with pytest.raises(ImageReadError, match="4D array"):
        open_image(tmp_path / "stack4d.tif")
    with pytest.raises(ImageReadError, match="no such file"):
        open_image(tmp_path / "missing.zarr")


def test_auto_format_and_labels(sampler, tmp_path, monkeypatch):
    import probda_deploy.runtime.outputs as outputs

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "small.tif", synthetic(np.arange(60), np.arange(64)))
    tifffile.imwrite(src / "large.tif", synthetic(np.arange(90), np.arange(100)))
    monkeypatch.setattr(outputs, "ZARR_AUTO_PIXELS", 5000)
    report = segment(sampler, src, tmp_path / "out", samples=2, outputs="mask,prob,labels")
    assert report.formats == {str(src / "large.tif"): "ome-zarr", str(src / "small.tif"): "tif"}
    assert (tmp_path / "out" / "large.ome.zarr").is_dir() and (tmp_path / "out" / "small_labels.tif").is_file()
    with pytest.raises(ConfigError, match="already exist"):
        segment(sampler, src / "large.tif", tmp_path / "out", samples=2, outputs="mask")
    with pytest.raises(ConfigError, match="labels"):
        segment(sampler, src, tmp_path / "o2", fmt="ome-zarr", outputs="labels")
    again = segment(sampler, src, tmp_path / "out", samples=2, outputs="mask,prob,labels", resume=True)
    assert again.skipped == 2


@pytest.mark.slow
def test_8192_image_streams_into_ome_zarr(sampler, tmp_path):
    """8192 x 8192 generated blockwise into zarr, segmented tiled, equal to the in-memory tiled run."""
    shape = (8192, 8192)
    src = write_input(tmp_path / "huge.zarr", shape)
    out = tmp_path / "huge.ome.zarr"
    info = _run(sampler, src, out, tile=1024, k=2, seed=0)
    assert info["blocks"] == 64 and info["levels"] == 6
    root = _check_ngff(out, shape, info["levels"])
    image = np.asarray(open_image(src)[:])
    ref = sampler.predict(image, eps=latent_eps(0, "huge.zarr", 2, sampler.latent_dim), tile=1024)
    for i, name in enumerate(("prob", "consensus", "std")):
        np.testing.assert_array_equal(root["0"][i], ref[name])
    if pytest.importorskip("ome_zarr.reader"):
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader

        node = list(Reader(parse_url(str(out)))())[0]
        assert node.data[0].shape == (3, 8192, 8192)


def test_preview_of_an_ome_zarr_output_comes_from_memory(sampler, tmp_path, monkeypatch):
    import imageio.v3 as iio

    import probda_deploy.runtime.batch as batch

    src = write_input(tmp_path / "p.zarr", (300, 260), chunk=128)
    monkeypatch.setattr(batch, "PREVIEW_SIDE", 100)  # a 3x smaller preview, kept while blocks are written
    report = segment(sampler, src, tmp_path / "out", fmt="ome-zarr", samples=2, tile=96, preview=True)
    (result,) = report.results
    assert result.status == "done" and result.preview == tmp_path / "out" / "preview" / "p.png"
    png = iio.imread(result.preview)
    assert png.shape == (100, 87, 3) and png.dtype == np.uint8 and png.std() > 0


def test_instances_and_object_table_equal_the_tiff_path(sampler, tmp_path):
    """The same image as TIFF (whole-image watershed) and as OME-Zarr in 64 px blocks: the same ids, the same rows.

    The random test model calls most of this image foreground: one clump spans every block, so each block's
    window grows to the whole image (zarr_instances.py)."""
    import csv

    img = synthetic(np.arange(150), np.arange(170))
    tifffile.imwrite(tmp_path / "obj.tif", img)
    kw = dict(samples=3, seed=4, tile=64, outputs="prob,instances,objects", threshold=0.5)
    tif = segment(sampler, tmp_path / "obj.tif", tmp_path / "tif", fmt="tif", **kw)
    zr = segment(sampler, tmp_path / "obj.tif", tmp_path / "zarr", fmt="ome-zarr", **kw)
    (rt,), (rz,) = tif.results, zr.results
    assert rz.outputs == (tmp_path / "zarr" / "obj.ome.zarr", tmp_path / "zarr" / "obj_objects.csv")
    root = zarr.open_group(str(rz.outputs[0]), mode="r")
    assert root["labels/instances/0"].chunks == (64, 64) and root["labels/instances/0"].dtype == np.uint32
    np.testing.assert_array_equal(root["0"][0], tifffile.imread(tmp_path / "tif" / "obj_prob.tif"))
    tiff_ids = tifffile.imread(tmp_path / "tif" / "obj_instances.tif")
    np.testing.assert_array_equal(root["labels/instances/0"][:], tiff_ids)  # ids in raster order on both paths
    assert rt.objects.count == rz.objects.count == int(tiff_ids.max()) > 3 and rt.objects.uncertain == rz.objects.uncertain
    assert rz.objects.inexact == 0
    tables = [list(csv.DictReader(open(p))) for p in (tmp_path / "tif" / "obj_objects.csv", rz.outputs[1])]
    exact = ("id", "area", "uncertain", "exact")
    assert [[r[k] for k in exact] for r in tables[0]] == [[r[k] for k in exact] for r in tables[1]]
    for a, b in zip(*tables):  # 4 decimals; the blocks add their per-object sums in another order than the whole image
        assert {k: float(v) for k, v in a.items()} == pytest.approx({k: float(v) for k, v in b.items()}, abs=1.5e-4)
    order = lambda r: (round(float(r["mean_consensus"]), 4), -round(float(r["mean_std"]), 4))  # the CSV keeps 4 decimals
    assert [order(r) for r in rz.objects.least_certain] == sorted(order(r) for r in tables[1])[:10]
    assert dict(root.attrs)["probda"]["settings"]["instances"] is True
