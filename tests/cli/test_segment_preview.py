import imageio.v3 as iio
import numpy as np
from typer.testing import CliRunner

from probda_deploy.cli.app import app
from probda_deploy.data.synthetic import write_dataset


def test_segment_preview_writes_one_png_per_input(tmp_path, tiny_checkpoint):
    images, _ = write_dataset(tmp_path / "d", n_images=2, shape=(40, 56), seed=3)
    res = CliRunner().invoke(app, ["segment", str(tiny_checkpoint), "-i", str(images), "-o", str(tmp_path / "seg"),
                                   "--preview", "--quiet"])
    assert res.exit_code == 0, res.output
    pngs = sorted((tmp_path / "seg" / "preview").glob("*.png"))
    assert [p.name for p in pngs] == ["img_000.png", "img_001.png"]
    img = iio.imread(pngs[0])
    assert img.shape == (40, 56, 3) and img.dtype == np.uint8 and img.std() > 0
