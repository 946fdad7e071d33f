"""The neutral weight format: one file that PyTorch, Gluon and Flax all read and write.

Canonical = the project's parameter names with PyTorch's names and layouts:

    block{i}.conv{j}.weight   (out, in, kH, kW)     block{i}.conv{j}.bias   (out,)
    block{i}.bn{j}.weight / .bias / .running_mean / .running_var   (channels,)
    fc{k}.weight              (out, in)             fc{k}.bias              (out,)

with the columns of fc1.weight in (C, H, W) order, the order in which an NCHW
feature map flattens. Stored as safetensors (float32), with the spec in the
metadata so that a file alone rebuilds its model. Each framework's weights.py
holds its own rename and transposes; this file imports no framework.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .arch import Block, VGGSpec
from .data import PIXELS
from .errors import WeightsError  # noqa: F401  (import it from common.errors)
from .files import atomic_path

FORMAT = "vgg-three-ways/1"


def expected_canonical(spec: VGGSpec) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of `spec` and its shape, in network order, by plain arithmetic."""
    out, cin = {}, spec.in_channels
    for i, b in enumerate(spec.blocks, 1):
        c = b.out_channels
        for j, k in enumerate(b.kernel_sizes, 1):
            out[f"block{i}.conv{j}.weight"], out[f"block{i}.conv{j}.bias"] = (c, cin, k, k), (c,)
            if spec.batch_norm:
                for name in ("weight", "bias", "running_mean", "running_var"):
                    out[f"block{i}.bn{j}.{name}"] = (c,)
            cin = c
    h = spec.hidden_units
    for k, (n_out, n_in) in enumerate(((h, spec.flat_features), (h, h), (spec.num_classes, h)), 1):
        out[f"fc{k}.weight"], out[f"fc{k}.bias"] = (n_out, n_in), (n_out,)
    return out


_ORDER = re.compile(r"block(\d+)\.(conv|bn)(\d+)\.(\w+)$|fc(\d+)\.(\w+)$")
_KINDS = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}


def _network_order(name: str):
    """Sort key: block by block, conv j before bn j before conv j+1, then the dense layers."""
    m = _ORDER.match(name)
    if not m:
        return (2, 0, 0, 0, name)  # not a canonical name at all: after everything else
    if m[1]:
        return (0, int(m[1]), int(m[3]), m[2] == "bn", _KINDS.get(m[4], 9), name)
    return (1, int(m[5]), 0, 0, _KINDS.get(m[6], 9), name)


def check_compatible(expected: dict, got: dict, what: str = "the model") -> None:
    """Raise WeightsError at the first tensor, in network order, that is missing, extra or of another shape.

    `expected` maps names to shapes; `got` maps names to arrays or shapes."""
    shapes = {k: tuple(getattr(v, "shape", v)) for k, v in got.items()}
    bad = [
        n
        for n in sorted(expected.keys() | shapes.keys(), key=_network_order)
        if n not in expected or n not in shapes or tuple(expected[n]) != shapes[n]
    ]
    if not bad:
        return
    n = bad[0]
    layer = n.rsplit(".", 1)[0]
    if n not in shapes:
        why = f"{n} {tuple(expected[n])} is missing from the weights"
    elif n not in expected:
        why = f"the weights have {n} {shapes[n]}, which {what} does not"
    else:
        why = f"{n} is {shapes[n]} in the weights but {tuple(expected[n])} in {what}"
    more = {1: "", 2: " (1 more tensor differs after it)"}.get(
        len(bad), f" ({len(bad) - 1} more tensors differ after it)"
    )
    raise WeightsError(
        f"weights do not fit {what}: the first layer that differs is {layer}: {why}{more}. "
        "Were they saved from another configuration (arch, width ratio, image size, batch norm, classes)?"
    )


# --- the spec in the file's metadata ----------------------------------------


def spec_metadata(spec: VGGSpec, **extra: str) -> dict[str, str]:
    """Metadata for save_weights: the spec (enough to rebuild the model) plus free-form strings
    (e.g. framework='torch'). safetensors metadata is str -> str, so the spec travels as JSON."""
    fields = dict(
        name=spec.name,
        blocks=[[b.out_channels, list(b.kernel_sizes)] for b in spec.blocks],
        in_channels=spec.in_channels,
        num_classes=spec.num_classes,
        image_size=list(spec.image_size),
        hidden_units=spec.hidden_units,
        dropout=spec.dropout,
        batch_norm=spec.batch_norm,
        lrn=spec.lrn,
    )
    return {"format": FORMAT, "spec": json.dumps(fields), **{k: str(v) for k, v in extra.items()}}


def spec_from_metadata(metadata: dict[str, str]) -> VGGSpec:
    try:
        f = json.loads(metadata["spec"])
        spec = VGGSpec(
            name=f["name"],
            blocks=tuple(Block(c, tuple(ks)) for c, ks in f["blocks"]),
            in_channels=f["in_channels"],
            num_classes=f["num_classes"],
            image_size=tuple(f["image_size"]),
            hidden_units=f["hidden_units"],
            dropout=f["dropout"],
            batch_norm=f["batch_norm"],
            lrn=f["lrn"],
        )
        problem = _spec_problem(spec)
    except (KeyError, TypeError, ValueError) as e:
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise WeightsError(
            f"the file's metadata holds no usable VGG spec ({problem}); was it written by this project's save()?"
        )
    return spec


def _spec_problem(spec: VGGSpec) -> str:
    """What makes a spec read from a file unbuildable (make_spec refuses the same on the command line), or ''."""

    def positive(v):
        return type(v) is int and v > 0

    counts = [spec.in_channels, spec.num_classes, spec.hidden_units, *spec.image_size]
    if not spec.blocks or not all(map(positive, counts)) or len(spec.image_size) != 2:
        return "sizes must be positive integers and there must be at least one block"
    if not all(
        positive(b.out_channels) and b.kernel_sizes and all(k in (1, 3) for k in b.kernel_sizes) for b in spec.blocks
    ):
        return "every block needs positive channels and kernels of size 1 or 3"
    if min(spec.image_size) >> len(spec.blocks) < 1:
        return f"{len(spec.blocks)} poolings shrink a {spec.image_size} input to nothing"
    if not (type(spec.dropout) in (int, float) and 0 <= spec.dropout < 1) or {
        type(spec.batch_norm),
        type(spec.lrn),
    } != {bool}:
        return "dropout must lie in [0, 1) and batch_norm and lrn be true or false"
    return ""


# --- the file ---------------------------------------------------------------


def save_weights(path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write float32 tensors and metadata as safetensors, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(arrays, tmp, metadata=metadata)


# What a file may store: float32 as is; other floats become float32, with a note on stderr.
# Integers and booleans are refused: no VGG weight is one, and converted they would load and give nonsense.
_CONVERTED = {"F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _bfloat16(path: Path, name: str, shape) -> np.ndarray:
    """A BF16 tensor as float32, exactly (bfloat16 is float32's upper 16 bits). NumPy has no bfloat16
    of its own, so the bytes are read at the offsets the file's header gives."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        begin, end = json.loads(f.read(n))[name]["data_offsets"]
        f.seek(8 + n + begin)
        raw = np.frombuffer(f.read(end - begin), "<u2")
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _refuse_non_finite(path: Path, tensors: dict[str, np.ndarray]) -> None:
    bad = [(k, v) for k, v in tensors.items() if not np.isfinite(v).all()]
    if not bad:
        return
    name, x = bad[0]
    nan, inf = int(np.isnan(x).sum()), int(np.isinf(x).sum())
    what = " and ".join(w for w in (f"{nan:,} NaN" if nan else "", f"{inf:,} infinite" if inf else "") if w)
    more = {1: ""}.get(len(bad), f"; {len(bad) - 1} more tensor{'s' * (len(bad) > 2)} after it too")
    raise WeightsError(
        f"{path}: {name} holds {what} values (of {x.size:,}){more}. Weights must be finite (one NaN "
        "spreads through the network and spoils the predictions); were they saved after training "
        "diverged? Use weights from an earlier epoch"
    )


def load_weights(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(float32 tensors in network order, metadata) of a file written by save_weights.

    Refused with a WeightsError that names the tensor: integer or boolean tensors, and tensors
    holding NaN or infinity. float16, bfloat16 and float64 are converted to float32, with a note."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.safetensors"
        hint = f"did you mean {inside}?" if inside.is_file() else "it holds no model.safetensors; name a weights file"
        raise WeightsError(f"{path} is a folder, not a weights file; {hint}")
    if path.exists() and not path.is_file():  # a FIFO or a device would be read forever
        raise WeightsError(f"{path} is not a regular file (a pipe, socket or device); name a weights file")
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    converted: dict[str, list[str]] = {}
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {}
            for k in sorted(f.keys(), key=_network_order):
                dtype = f.get_slice(k).get_dtype()
                if dtype == "F32":
                    tensors[k] = f.get_tensor(k)
                elif dtype in _CONVERTED:
                    converted.setdefault(_CONVERTED[dtype], []).append(k)
                    tensors[k] = (
                        _bfloat16(path, k, f.get_slice(k).get_shape())
                        if dtype == "BF16"
                        else f.get_tensor(k).astype(np.float32)
                    )
                else:
                    kind = dtype.lower().replace("i", "int", 1).replace("u", "uint", 1).replace("f", "float", 1)
                    raise WeightsError(
                        f"{path}: {k} stores {kind} values; weights are floating point (float32, "
                        "or float16, bfloat16, float64, which are converted). Is this a weights file?"
                    )
    except WeightsError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    _refuse_non_finite(path, tensors)
    for dtype, names in converted.items():
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        how = "narrowed" if dtype == "float64" else "widened"
        print(f"note: {path} stores {dtype} ({names[0]}{more}); {how} to float32", file=sys.stderr)
    return tensors, metadata


def input_metadata(config) -> dict[str, str]:
    """How the model saw its images in training, for the weights file: normalize (standardised
    pixels or the loader's 0-1 scale) and pixels (common.data.PIXELS: resize the float image, or
    d2l's uint8 resize then /255). The evaluate commands feed the model the same (read_inputs)."""
    return {"normalize": str(config.normalize), "pixels": config.pixels}


def read_inputs(path, metadata: dict[str, str]) -> tuple[bool, str]:
    """(normalize, pixels) of a weights file, as input_metadata wrote them; a file without them (an
    older one, or from weights.save with no extras) saw the defaults: 0-1 pixels, resized as floats."""
    normalize = metadata.get("normalize", "false").lower() in ("true", "1")
    pixels = metadata.get("pixels", "float")
    if pixels not in PIXELS:
        raise WeightsError(f"{path}: its metadata names pixels {pixels!r}, not one of {', '.join(PIXELS)}")
    return normalize, pixels


def read_spec(path) -> tuple[VGGSpec, dict[str, np.ndarray], dict[str, str]]:
    """(spec, tensors, metadata) of a file, the tensors already checked against the spec."""
    tensors, metadata = load_weights(path)
    if metadata.get("format") != FORMAT:
        raise WeightsError(
            f"{path}: not a {FORMAT} weights file (metadata format is {metadata.get('format')!r}); "
            "write one with vgg_torch/vgg_gluon/vgg_flax .weights.save()"
        )
    try:
        spec = spec_from_metadata(metadata)
        check_compatible(expected_canonical(spec), tensors, f"the spec in its own metadata ({spec.name})")
    except WeightsError as e:
        raise WeightsError(f"{path}: {e}") from None
    return spec, tensors, metadata
