"""The bioimage.io model description (format 0.5) of a probda zoo package.

Built from bioimageio.spec's description classes, never hand-written YAML.
Fields whose validation needs the network are left out on purpose: `git_repo`,
`links`, cite `url`s, authors' `github_user`, `training_data`, `id`, `uploader`
(bioimageio.spec checks that URLs exist and resolves ids and GitHub users online).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..method import FLOAT_MAPS

# bioimageio.spec is imported lazily inside the functions: it is slow to import.

INPUT_ID = "image"
OUTPUT_IDS = FLOAT_MAPS
OUTPUT_TEXT = {
    "prob": "mean foreground probability of the K prior samples",
    "consensus": "fraction of the K samples that are confident (and agree with the mean's class)",
    "std": "per-pixel standard deviation of the K sample probabilities",
}
PAPER_DOI = "10.48550/arXiv.2303.11790"
PUNET_DOI = "10.48550/arXiv.1806.05034"
TAGS = ["segmentation", "semantic-segmentation", "probabilistic-unet", "unet", "domain-adaptation",
        "uncertainty", "2d", "pytorch", "onnx", "torchscript", "probda"]


@dataclass(frozen=True)
class ZooFiles:
    """Local files that go into the package."""

    readme: Path
    cover: Path
    test_input: Path
    test_outputs: dict[str, Path]
    sample_input: Path
    onnx: Path
    torchscript: Path


@dataclass(frozen=True)
class ZooMeta:
    """User-facing metadata of the package."""

    name: str
    description: str
    authors: tuple[tuple[str, str | None], ...]
    license: str = "MIT"
    version: str = "0.1.0"


@dataclass(frozen=True)
class Geometry:
    """Axis geometry: channels, valid input sizes (min + n*step) and output halo."""

    in_channels: int
    num_classes: int
    step: int
    min_size: int
    halo: int


def geometry_for(config: Any, *, min_side: int = 0) -> Geometry:
    """Valid sizes for a PUNet config: step = size_multiple, halo 4*step, min max(2*halo + step, min_side).

    min_side: the model's own minimum (`PUNet.min_side`, e.g. torch-em's unpadded prior encoder).
    """
    step = int(config.size_multiple)
    halo = 4 * step
    return Geometry(int(config.in_channels), int(config.num_classes), step, max(2 * halo + step, int(min_side)), halo)


def tolerances_for(outputs: dict[str, np.ndarray]) -> list[dict]:
    """Reproducibility tolerances per output (deliberate, see README "Validation").

    prob/std are continuous: atol 1e-4 (capped at 1% of the tensor's max, a
    bioimageio.spec rule), rtol 1e-3, 100 mismatched pixels per million.
    consensus counts thresholded samples (steps of 1/K): a float round-off at a
    threshold flips a pixel by 1/K, so it allows 1000 per million (0.1 %).
    """
    out = []
    for key in OUTPUT_IDS:
        top = float(np.abs(outputs[key]).max())
        atol = float(min(1e-4, 0.01 * top))
        ppm = 1000 if key == "consensus" else 100
        rtol = 0.0 if key == "consensus" else 1e-3
        out.append({"output_ids": [key], "absolute_tolerance": atol, "relative_tolerance": rtol,
                    "mismatched_elements_per_million": ppm})
    return out


def _input_descr(files: ZooFiles, geo: Geometry, norm_eps: float):
    from bioimageio.spec.model import v0_5 as s

    names = ["raw"] if geo.in_channels == 1 else [f"raw{i}" for i in range(geo.in_channels)]
    size = s.ParameterizedSize(min=geo.min_size, step=geo.step)
    return s.InputTensorDescr(
        id=s.TensorId(INPUT_ID),
        description="raw 2D image (any intensity range; standardised by the preprocessing)",
        axes=[s.BatchAxis(), s.ChannelAxis(channel_names=[s.Identifier(n) for n in names]),
              s.SpaceInputAxis(id=s.AxisId("y"), size=size), s.SpaceInputAxis(id=s.AxisId("x"), size=size)],
        test_tensor=s.FileDescr(source=files.test_input),
        sample_tensor=s.FileDescr(source=files.sample_input),
        data=s.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[s.ZeroMeanUnitVarianceDescr(kwargs=s.ZeroMeanUnitVarianceKwargs(
            axes=[s.AxisId("channel"), s.AxisId("y"), s.AxisId("x")], eps=norm_eps))],
    )


def _output_descr(key: str, path: Path, geo: Geometry):
    from bioimageio.spec.model import v0_5 as s

    # probda's two-output models are boundary models (`probda train --boundaries`)
    names = ["foreground", "boundary"][: geo.num_classes] if geo.num_classes <= 2 else [f"class{i}" for i in range(geo.num_classes)]
    ref = {a: s.SizeReference(tensor_id=s.TensorId(INPUT_ID), axis_id=s.AxisId(a)) for a in ("y", "x")}
    top = 0.5 if key == "std" else 1.0
    return s.OutputTensorDescr(
        id=s.TensorId(key),
        description=OUTPUT_TEXT[key],
        axes=[s.BatchAxis(), s.ChannelAxis(channel_names=[s.Identifier(n) for n in names]),
              s.SpaceOutputAxisWithHalo(id=s.AxisId("y"), size=ref["y"], halo=geo.halo),
              s.SpaceOutputAxisWithHalo(id=s.AxisId("x"), size=ref["x"], halo=geo.halo)],
        test_tensor=s.FileDescr(source=path),
        data=s.IntervalOrRatioDataDescr(type="float32", range=(0.0, top)),
    )


def _weights_descr(files: ZooFiles, *, opset: int, authors: list, comment: str):
    import torch
    from bioimageio.spec.model import v0_5 as s

    version = torch.__version__.split("+")[0]
    return s.WeightsDescr(
        torchscript=s.TorchscriptWeightsDescr(source=files.torchscript, pytorch_version=s.Version(version),
                                              authors=authors, comment=f"torch.jit.trace of the zoo graph; {comment}"),
        onnx=s.OnnxWeightsDescr(source=files.onnx, opset_version=opset, parent="torchscript", authors=authors,
                                comment=f"torch.onnx.export of the same graph (dynamic batch, y, x); {comment}"),
    )


def build_description(files: ZooFiles, meta: ZooMeta, geo: Geometry, *, opset: int, norm_eps: float,
                      tolerances: list[dict], probda_config: dict, samples: int):
    """Assemble and validate the ModelDescr (format 0.5).

    Raises:
        pydantic.ValidationError: invalid metadata (the caller turns it into ExportError).
    """
    from bioimageio.spec.model import v0_5 as s

    authors = [s.Author(name=n, affiliation=a) for n, a in meta.authors]
    comment = f"{samples} fixed noise draws baked in; see config.probda.sampling"
    bio = s.BioimageioConfig(
        reproducibility_tolerance=[s.ReproducibilityTolerance(**t) for t in tolerances],
        architecture_type="Probabilistic U-Net",
        architecture_description=(
            "UNet features computed once; a prior net gives a diagonal Gaussian over a latent z; "
            f"{samples} fixed draws of z go through 1x1 convs (fcomb); outputs are the mean, "
            "consensus and std of the sample probabilities."),
        task="segmentation",
        model_parameter_count=int(probda_config.get("model", {}).get("parameter_count", 0)) or None,
    )
    return s.ModelDescr(
        name=meta.name,
        description=meta.description,
        authors=authors,
        cite=[
            s.CiteEntry(text="Archit A. & Pape C. (2023). Probabilistic Domain Adaptation for Biomedical Image "
                             "Segmentation. arXiv:2303.11790", doi=s.Doi(PAPER_DOI)),
            s.CiteEntry(text="Kohl S. et al. (2018). A Probabilistic U-Net for Segmentation of Ambiguous Images. "
                             "arXiv:1806.05034", doi=s.Doi(PUNET_DOI)),
            s.CiteEntry(text=f"probda {probda_config.get('probda_version', '')}: the tool that trained, adapted "
                             "and packaged this model (implements arXiv:2303.11790)", doi=s.Doi(PAPER_DOI)),
        ],
        license=meta.license,
        tags=list(TAGS),
        version=meta.version,
        documentation=s.FileDescr(source=files.readme),
        covers=[s.FileDescr(source=files.cover)],
        inputs=[_input_descr(files, geo, norm_eps)],
        outputs=[_output_descr(k, files.test_outputs[k], geo) for k in OUTPUT_IDS],
        weights=_weights_descr(files, opset=opset, authors=authors, comment=comment),
        config=s.Config(bioimageio=bio, probda=probda_config),
    )
