"""Import PUNet checkpoints saved by the paper's reference code or by torch-em.

Both save torch-em style dicts (docs/method.md, "The model"): `model_state` (the
state dict), optionally `teacher_state`, plus `init`, `iteration`, ... The
configuration is inferred from the weight shapes; the result is a probda
checkpoint that rebuilds the same network (same outputs for the same z).

Loading is safe by default: first `torch.load(weights_only=True)`; if the file
pickles other objects (torch-em stores e.g. the training dataset in `init`),
an inert unpickler reads it without running any code from the file (unknown
classes become placeholders; only tensors and builtins are used). Only with
`trust=True` is the file fully unpickled, which runs whatever code it names.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..files import sha256_file
from .checkpoint import FORMAT, make_checkpoint
from .punet import PUNetConfig
from .registry import model_from_spec
from .torch_em_unet import NORMS

log = logging.getLogger(__name__)

LAYOUT_REFERENCE = "reference"
LAYOUT_TORCH_EM = "torch-em"
_UNSET: Any = object()  # "not given" (None is a valid torch-em norm)


@dataclass
class ImportResult:
    """What `import_checkpoint` produced: the probda checkpoint and how it was read."""

    checkpoint: dict
    layout: str
    model_class: str
    config: dict
    state_used: str  # "teacher_state" | "model_state" | "state_dict"
    load_mode: str  # "weights_only" | "inert" | "trusted"
    source_iteration: int | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- loading


class _Placeholder:
    """Stands in for any class the inert unpickler does not allow; runs no code."""

    _probda_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<unloaded {self._probda_name}>"


def _placeholder(module: str, name: str) -> type:
    return type("Unloaded", (_Placeholder,), {"_probda_name": f"{module}.{name}"})


def _allowed_globals() -> dict[str, Any]:
    try:
        from torch import _weights_only_unpickler as wou

        return dict(wou._get_allowed_globals())
    except Exception:  # private API moved: fall back to the tensor essentials
        import collections

        import torch._utils as tu

        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": tu._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": tu._rebuild_parameter,
        }


class _InertUnpickler(pickle.Unpickler):
    allowed: dict[str, Any] = {}

    def find_class(self, module: str, name: str):
        key = f"{module}.{name}"
        if key in self.allowed:
            return self.allowed[key]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        return _placeholder(module, name)


class _InertPickleModule:
    """A `pickle_module` for torch.load whose Unpickler never imports or calls foreign code."""

    Unpickler = _InertUnpickler
    __name__ = "probda_inert_pickle"

    @staticmethod
    def load(*args, **kwargs):  # legacy (non-zip) torch files
        raise pickle.UnpicklingError("legacy torch format is not supported by the inert loader")


def load_foreign_checkpoint(path: str | Path, *, trust: bool = False) -> tuple[Any, str]:
    """Load a reference/torch-em checkpoint on CPU.

    Returns:
        (object, mode) with mode "weights_only", "inert" or "trusted".

    Raises:
        CheckpointError: missing/corrupt file, or unreadable without `trust`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), "weights_only"
    except pickle.UnpicklingError:
        log.info("%s: holds pickled Python objects besides weights; reading it without running code", path)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {str(e)[:160]})") from None
    if trust:
        log.warning("%s: --trust: fully unpickling the file (this runs any code it contains)", path)
        try:
            return torch.load(path, map_location="cpu", weights_only=False), "trusted"
        except Exception as e:
            raise CheckpointError(f"{path}: could not be unpickled even with --trust ({type(e).__name__}: {str(e)[:160]})") from None
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a torch checkpoint in the zip format (a legacy torch file or not a checkpoint); "
            f"a legacy file can only be read with --trust (unpickling runs code stored in the file)"
        )
    _InertUnpickler.allowed = _allowed_globals()
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_InertPickleModule), "inert"
    except Exception as e:
        raise CheckpointError(
            f"{path}: refused: the file needs arbitrary Python objects unpickled and cannot be read "
            f"safely ({type(e).__name__}: {str(e)[:120]}); if you trust its origin, re-run with --trust "
            f"(unpickling runs code stored in the file)"
        ) from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def select_state(obj: Any, *, teacher: bool | None, where: str) -> tuple[dict[str, torch.Tensor], str]:
    """Pick `teacher_state` / `model_state` (or a bare state dict) and strip wrapper prefixes.

    Args:
        teacher: True: teacher only; False: student (`model_state`); None: teacher if present.
    """
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        raise CheckpointError(f"{where}: already a probda checkpoint; nothing to import")
    if _is_tensor_dict(obj):
        if teacher:
            raise CheckpointError(f"{where}: a bare state dict has no teacher weights; drop --use-teacher")
        state, used = obj, "state_dict"
    elif isinstance(obj, dict) and ("model_state" in obj or "teacher_state" in obj):
        has_teacher = _is_tensor_dict(obj.get("teacher_state"))
        use_teacher = has_teacher if teacher is None else teacher
        if use_teacher and not has_teacher:
            raise CheckpointError(f"{where}: no `teacher_state` in the checkpoint; use --use-student")
        used = "teacher_state" if use_teacher else "model_state"
        state = obj.get(used)
        if not _is_tensor_dict(state):
            raise CheckpointError(f"{where}: `{used}` is missing or not a state dict of tensors")
    else:
        raise CheckpointError(f"{where}: no `model_state` found; expected a checkpoint of the paper's code or torch-em")
    return {_strip_prefix(k): v.detach().clone().float() if v.is_floating_point() else v for k, v in state.items()}, used


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


# ---------------------------------------------------------------- inference


def _conv_shapes(state: dict, prefix: str) -> list[tuple[int, tuple[int, ...]]]:
    """(index, shape) of 4D weights `prefix<index>.weight`, sorted by index."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.weight$")
    out = [(int(m.group(1)), tuple(v.shape)) for k, v in state.items() if (m := pat.match(k)) and v.dim() == 4]
    return sorted(out)


def _levels(state: dict, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(found) + 1 if found else 0


def _gaussian_filters(state: dict, name: str, where: str, depth: int) -> tuple[list[int], int, int]:
    """Filters per level, convs per level and input channels of prior/posterior encoders.

    Levels are split where the Sequential index jumps by more than between two
    convs of one level (the pooling layer has no weights).
    """
    convs = _conv_shapes(state, f"{name}.encoder.layers.")
    if not convs:
        raise CheckpointError(f"{where}: no `{name}.encoder.layers.N.weight` convs found")
    gaps = [b[0] - a[0] for a, b in zip(convs, convs[1:])]
    levels: list[list[tuple[int, ...]]] = [[convs[0][1]]]
    uniform = len(set(gaps)) <= 1
    for gap, (_, shape) in zip(gaps, convs[1:]):
        new_level = (len(convs) == depth) if uniform else gap > min(gaps)
        if new_level:
            levels.append([])
        levels[-1].append(shape)
    counts = {len(level) for level in levels}
    if len(levels) != depth or len(counts) != 1:
        raise CheckpointError(
            f"{where}: cannot split the `{name}` encoder into {depth} levels of equal conv count; unsupported layout"
        )
    return [level[0][0] for level in levels], counts.pop(), convs[0][1][1]


def _head_dims(state: dict, where: str) -> tuple[int, int, int]:
    """(latent_dim, num_classes, n_fcomb) from prior.conv_layer and fcomb."""
    try:
        latent = state["prior.conv_layer.weight"].shape[0] // 2
        num_classes = state["fcomb.last_layer.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"{where}: missing {e.args[0]}; not a Probabilistic UNet checkpoint") from None
    n_fcomb = len(_conv_shapes(state, "fcomb.layers.")) + 1
    return int(latent), int(num_classes), n_fcomb


def infer_reference_config(state: dict, *, where: str = "checkpoint") -> PUNetConfig:
    """PUNetConfig of a reference-code state dict (unet.contracting_path.N...)."""
    depth = _levels(state, "unet.contracting_path.")
    filters = [_conv_shapes(state, f"unet.contracting_path.{i}.layers.")[0][1][0] for i in range(depth)]
    first = _conv_shapes(state, "unet.contracting_path.0.layers.")
    in_channels = first[0][1][1]
    latent, num_classes, n_fcomb = _head_dims(state, where)
    g_filters, g_convs, _ = _gaussian_filters(state, "prior", where, depth)
    if g_convs != len(first):
        raise CheckpointError(f"{where}: the prior encoder has {g_convs} convs per level and the UNet {len(first)}; unsupported")
    doubling = [filters[0] * 2**i for i in range(depth)]
    return PUNetConfig(
        in_channels=in_channels, num_classes=num_classes, depth=depth, initial_features=filters[0],
        latent_dim=latent, n_fcomb=n_fcomb, convs_per_block=len(first), align_corners=True,
        gaussian_padding=1, num_filters=None if filters == doubling else tuple(filters),
        gaussian_filters=None if g_filters == filters else tuple(g_filters),
    )


def _torch_em_norm(state: dict, hint: Any, where: str) -> str | None:
    """Norm type: `hint` if given (user or init.model_kwargs), else from the first UNet block's keys."""
    if hint is not _UNSET:
        if hint not in NORMS:
            raise CheckpointError(f"{where}: unknown torch-em norm {hint!r}; expected one of {NORMS}")
        return hint
    keys = {k[len("unet.encoder.blocks.0.block."):] for k in state if k.startswith("unet.encoder.blocks.0.block.")}
    w0 = state.get("unet.encoder.blocks.0.block.0.weight")
    if w0 is not None and w0.dim() == 4:
        return None
    if not any(k.startswith("0.") for k in keys):
        return "InstanceNorm"  # affine-free norm at index 0, conv at 1
    if "0.running_mean" not in keys:
        return "GroupNorm"
    raise CheckpointError(
        f"{where}: the UNet uses a norm with running statistics (BatchNorm or InstanceNormTrackStats) and "
        f"the checkpoint does not say which; pass --norm BatchNorm or --norm InstanceNormTrackStats"
    )


def infer_torch_em_config(state: dict, *, norm_hint: Any = _UNSET, beta: float = 1.0, where: str = "checkpoint") -> dict:
    """TorchEmPUNetConfig fields of a torch-em ProbabilisticUNet state dict."""
    depth = _levels(state, "unet.encoder.blocks.")
    norm = _torch_em_norm(state, norm_hint, where)
    filters, convs, in_channels = _gaussian_filters(state, "prior", where, depth)
    latent, num_classes, n_fcomb = _head_dims(state, where)
    post_in = _gaussian_filters(state, "posterior", where, depth)[2]
    label_ch = post_in - in_channels
    if label_ch <= 0 or label_ch % num_classes:
        raise CheckpointError(f"{where}: posterior input channels {post_in} do not fit {in_channels} + labels")
    return {
        "in_channels": in_channels, "num_classes": num_classes, "num_filters": tuple(filters),
        "latent_dim": latent, "n_fcomb": n_fcomb, "convs_per_block": convs, "norm": norm,
        "num_raters": label_ch // num_classes, "beta": float(beta), "gaussian_padding": 0,
    }


def detect_layout(state: dict, where: str) -> str:
    if any(k.startswith("unet.encoder.blocks.") for k in state):
        return LAYOUT_TORCH_EM
    if any(k.startswith("unet.contracting_path.") for k in state):
        return LAYOUT_REFERENCE
    sample = ", ".join(sorted(state)[:3])
    raise CheckpointError(
        f"{where}: unknown weight layout (first keys: {sample}); expected a Probabilistic UNet from the "
        f"paper's code (unet.contracting_path...) or torch-em (unet.encoder.blocks...)"
    )


# ---------------------------------------------------------------- import


def _model_kwargs(obj: Any) -> dict:
    init = obj.get("init") if isinstance(obj, dict) else None
    kwargs = init.get("model_kwargs") if isinstance(init, dict) else None
    return kwargs if isinstance(kwargs, dict) else {}


def import_checkpoint(
    path: str | Path, *, trust: bool = False, teacher: bool | None = None, norm: Any = _UNSET
) -> ImportResult:
    """Convert a reference-code or torch-em PUNet checkpoint into a probda checkpoint.

    Args:
        path: the `.pt` file (torch-em style dict or a bare state dict).
        trust: fully unpickle files the safe loaders cannot read (runs code from the file).
        teacher: True/False select `teacher_state`/`model_state`; None = teacher if present.
        norm: torch-em norm type (None = no norm) when it cannot be told from the
            weights; by default from `init.model_kwargs` or the weight keys.

    Raises:
        CheckpointError: unreadable, unsafe without `trust`, or not a PUNet of a known layout.
    """
    where = str(path)
    obj, mode = load_foreign_checkpoint(path, trust=trust)
    state, used = select_state(obj, teacher=teacher, where=where)
    layout = detect_layout(state, where)
    kwargs = _model_kwargs(obj)
    beta = kwargs.get("beta") if isinstance(kwargs.get("beta"), (int, float)) else None
    if layout == LAYOUT_REFERENCE:
        cls_name, config = "PUNet", asdict(infer_reference_config(state, where=where))
        if beta is not None:
            config["beta"] = float(beta)
    else:
        hint = norm if norm is not _UNSET else kwargs.get("norm", _UNSET)
        cls_name = "TorchEmPUNet"
        config = infer_torch_em_config(state, norm_hint=hint, beta=1.0 if beta is None else beta, where=where)
    try:
        model = model_from_spec(cls_name, config)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{where}: inferred configuration is invalid ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where}: weights do not fit the inferred {cls_name} ({str(e)[:240]})") from None
    iteration = obj.get("iteration") if isinstance(obj, dict) else None
    iteration = int(iteration) if isinstance(iteration, int) else None
    ckpt = make_checkpoint(model.eval(), iteration=iteration or 0)
    ckpt["provenance"]["imported_from"] = {
        "path": str(Path(path).resolve()), "sha256": sha256_file(path), "layout": layout,
        "state": used, "load_mode": mode, "iteration": iteration,
    }
    notes = _notes(layout, config)
    return ImportResult(ckpt, layout, cls_name, ckpt["model_config"], used, mode, iteration, notes)


def _notes(layout: str, config: dict) -> list[str]:
    if layout == LAYOUT_REFERENCE:
        return ["align_corners=True as in the reference code: tiled prediction is not exactly seamless"]
    return [
        f"torch-em UNet: image sides are padded to multiples of {2 ** len(config['num_filters'])}",
        "prior/posterior convs are unpadded: images must be large enough for the encoder",
    ]
