"""README.md of a zoo package (documentation with a Validation section)."""

from __future__ import annotations

from pathlib import Path

from .describe import INPUT_ID, OUTPUT_IDS, OUTPUT_TEXT, Geometry, ZooMeta


def write_readme(path: Path, meta: ZooMeta, geo: Geometry, *, samples: int, seed: int, consensus: dict,
                 tolerances: list[dict], provenance: dict, zip_name: str) -> Path:
    """Write the package README: what the model does, how to run it, how it was validated."""
    tol_rows = "\n".join(
        f"| `{t['output_ids'][0]}` | {t['absolute_tolerance']:.1e} | {t['relative_tolerance']:.0e} | "
        f"{t['mismatched_elements_per_million']} |" for t in tolerances
    )
    outputs = "\n".join(f"- `{k}`: {OUTPUT_TEXT[k]}" for k in OUTPUT_IDS)
    ckpt = provenance.get("checkpoint", {})
    lines = f"""# {meta.name}

{meta.description}

A Probabilistic U-Net (Kohl et al. 2018), trained and/or adapted with probda's
consensus-filtered self-training (Archit & Pape 2023, arXiv:2303.11790), packaged
as one deterministic graph: the image goes through the UNet and the prior net
once, then {samples} fixed latent draws (seed {seed}, stored in
`config.probda.sampling.eps`) go through the 1x1-conv head. Every runtime
therefore reproduces the same outputs.

## Inputs and outputs
- `{INPUT_ID}`: (batch, channel={geo.in_channels}, y, x) float32, any intensity range; the
  preprocessing standardises each image ((x - mean) / (std + eps) over channel, y, x).
  Valid sizes: y, x = {geo.min_size} + n * {geo.step}; other sizes are reflect-padded
  inside the graph. Outputs declare a halo of {geo.halo} pixels for blockwise prediction.
{outputs}

Consensus rule `{consensus.get('rule')}` with thresholds high={consensus.get('threshold_high')},
low={consensus.get('threshold_low')}. A mask is `prob >= 0.5`.

## Usage
```
bioimageio test {zip_name}
bioimageio predict {zip_name} --inputs IMG.tif --outputs 'out/{{output_id}}/{{sample_id}}.tif'
```
With probda installed: `probda validate {zip_name}`.

## Validation
How the package was validated:
- bioimageio.core's `test_model` ran on the written zip for both weight formats
  (torchscript, the parent, and onnx) before the export reported success: the
  test input reproduces the test outputs, and inference runs for batch sizes 1
  and 2 and sizes {geo.min_size}, {geo.min_size + geo.step}, {geo.min_size + 2 * geo.step}.
- Reproducibility tolerances (`config.bioimageio.reproducibility_tolerance`):

| output | absolute | relative | mismatched pixels per million |
|---|---|---|---|
{tol_rows}

  `prob` and `std` are continuous and agree to float32 round-off. `consensus`
  counts samples above/below thresholds, so a round-off at a threshold flips a
  pixel by 1/{samples}; up to 0.1 % such pixels are tolerated.

How to validate the model quantitatively on your own data: predict annotated
images, threshold `prob` at 0.5 and compute the Dice score against the labels
(`probda evaluate` does this for a folder of images and labels). Without labels,
low `consensus` and high `std` mark regions where the model is unsure.

Checkpoint: `{ckpt.get('file', '?')}` (sha256 `{str(ckpt.get('sha256', '?'))[:16]}...`),
iteration {ckpt.get('iteration', '?')}; full provenance in `config.probda`.

## Limitations
- The prior net averages over the whole input, so blockwise prediction
  (`--blockwise`) draws a slightly different latent per block; predict whole
  images where memory allows. Halo padding (symmetric) also enters the
  standardisation statistics, so `bioimageio predict` can differ slightly from
  `probda segment` near image borders.
- Offline packaging: `git_repo`, `links`, citation URLs, GitHub user names and
  `training_data` are left out because their validation needs the network.
"""
    path.write_text(lines, encoding="utf-8")
    return path
