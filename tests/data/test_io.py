import logging
import os

import numpy as np
import pytest
import tifffile
import imageio.v3 as iio

from probda_deploy.data.io import list_images, read_image, read_label, write_tiff_atomic
from probda_deploy.errors import ImageReadError


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_reads_any_dtype_as_float32(tmp_path, dtype):
    arr = (np.arange(30).reshape(5, 6) % 7).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", arr)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.float32 and out.shape == (5, 6) and np.array_equal(out, arr.astype(np.float32))


def test_png_jpeg_and_rgb_to_gray_with_warning(tmp_path, caplog):
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[5:10, 5:10] = (200, 100, 50)
    iio.imwrite(tmp_path / "c.png", rgb)
    with caplog.at_level(logging.WARNING):
        g = read_image(tmp_path / "c.png")
    assert g.shape == (20, 20) and "converted to grayscale" in caplog.text
    iio.imwrite(tmp_path / "d.jpg", rgb)
    assert read_image(tmp_path / "d.jpg").shape == (20, 20)


def test_stack_is_3d(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.random.rand(4, 16, 16).astype(np.float32))
    assert read_image(tmp_path / "s.tif").shape == (4, 16, 16)
    with pytest.raises(ImageReadError, match="3D stack"):
        read_image(tmp_path / "s.tif", allow_stack=False)


@pytest.mark.parametrize("case,match", [
    ("zero", "empty file"),
    ("text", "not a readable image"),
    ("truncated", "not a readable image"),
    ("nan", "NaN/inf"),
    ("constant", "constant"),
    ("4d", "4D array"),
    ("missing", "no such file"),
])
def test_bad_images_give_one_clear_error_naming_the_file(tmp_path, case, match):
    p = tmp_path / f"{case}.tif"
    if case == "zero":
        p.write_bytes(b"")
    elif case == "text":
        p.write_text("hello, I am not an image")
    elif case == "truncated":
        tifffile.imwrite(p, np.random.rand(64, 64).astype(np.float32))
        p.write_bytes(p.read_bytes()[:300])
    elif case == "nan":
        a = np.random.rand(8, 8).astype(np.float32)
        a[2, 2] = np.nan
        tifffile.imwrite(p, a)
    elif case == "constant":
        tifffile.imwrite(p, np.full((8, 8), 5, np.uint8))
    elif case == "4d":
        tifffile.imwrite(p, np.random.rand(2, 3, 8, 8).astype(np.float32))
    with pytest.raises(ImageReadError, match=match) as e:
        read_image(p)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_labels_binary_and_checked(tmp_path):
    lab = np.zeros((6, 6), np.uint16)
    lab[1:3, 1:3] = 7
    tifffile.imwrite(tmp_path / "l.tif", lab)
    assert read_label(tmp_path / "l.tif").sum() == 4
    with pytest.raises(ImageReadError, match=r"label shape \(6, 6\) != image"):
        read_label(tmp_path / "l.tif", shape=(5, 5))
    tifffile.imwrite(tmp_path / "neg.tif", -lab.astype(np.int32))
    with pytest.raises(ImageReadError, match="negative"):
        read_label(tmp_path / "neg.tif")


def test_list_images_and_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no images found"):
        list_images(tmp_path / "empty")
    tifffile.imwrite(tmp_path / "b.tif", np.eye(4))
    tifffile.imwrite(tmp_path / "a.tif", np.eye(4))
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)] == ["a.tif", "b.tif"]
    assert [p.name for p in list_images(str(tmp_path / "a*.tif"))] == ["a.tif"]


def test_write_tiff_atomic(tmp_path):
    write_tiff_atomic(tmp_path / "o.tif", np.ones((3, 3), np.uint8))
    assert os.listdir(tmp_path) == ["o.tif"]
