"""Flax NNX <-> the canonical weight format (common.weights).

Flax differs from the canonical (PyTorch) layout in three ways, all handled here:
  - names: `kernel` and batch norm's `scale` are `weight`; `mean`/`var` are `running_mean`/`running_var`;
  - layouts: Conv kernels are HWIO (canonical OIHW); Linear kernels are (in, out) (canonical (out, in));
  - fc1's input order: Flax flattens an NHWC feature map in (H, W, C) order, the canonical
    columns are in (C, H, W) order (NCHW flattening), so fc1's input axis is permuted.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.weights import (
    check_compatible,
    expected_canonical,
    input_metadata,
    load_weights,
    save_weights,
    spec_metadata,
)

_STATE = (nnx.Param, nnx.BatchStat)
_NAMES = {"bias": "bias", "mean": "running_mean", "var": "running_var"}  # kernel and scale: see below


def _canonical_one(path: tuple[str, ...], x: np.ndarray, spec) -> tuple[str, np.ndarray]:
    layer, param = ".".join(map(str, path[:-1])), path[-1]
    if param == "scale":
        return f"{layer}.weight", x
    if param != "kernel":
        return f"{layer}.{_NAMES[param]}", x
    if x.ndim == 4:
        return f"{layer}.weight", x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if layer == "fc1":
        c, h, w = spec.feature_shape
        x = x.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)  # rows (H, W, C) -> (C, H, W)
    return f"{layer}.weight", x.T  # (in, out) -> (out, in)


def _flax_one(name: str, x: np.ndarray, spec) -> tuple[tuple[str, ...], np.ndarray]:
    layer, param = name.rsplit(".", 1)
    path = tuple(layer.split("."))
    if param == "weight" and ".bn" in layer:
        return path + ("scale",), x
    if param != "weight":
        return path + ({v: k for k, v in _NAMES.items()}[param],), x
    if x.ndim == 4:
        return path + ("kernel",), x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if layer == "fc1":
        c, h, w = spec.feature_shape
        x = x.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(-1, h * w * c)  # columns (C, H, W) -> (H, W, C)
    return path + ("kernel",), x.T  # (out, in) -> (in, out)


def _canonical_from_state(state: nnx.State, spec) -> dict[str, np.ndarray]:
    """Canonical tensors of any State shaped like the model's (its parameters, or their gradients)."""
    out = dict(_canonical_one(path, np.asarray(v[...], np.float32), spec) for path, v in nnx.to_flat_state(state))
    return {k: out[k] for k in expected_canonical(spec) if k in out}  # network order


def to_canonical(model: nnx.Module) -> dict[str, np.ndarray]:
    return _canonical_from_state(nnx.state(model, _STATE), model.spec)


def from_canonical(model: nnx.Module, tensors: dict[str, np.ndarray]) -> nnx.Module:
    """Copy canonical tensors into `model` in place, after checking that every name and shape fits."""
    check_compatible(expected_canonical(model.spec), tensors, f"this model ({model.spec.name})")
    pure = {}
    for name, x in tensors.items():
        path, value = _flax_one(name, np.asarray(x, np.float32), model.spec)
        node = pure
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(value)
    state = nnx.state(model, _STATE)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)
    return model


def save(model: nnx.Module, path, **metadata: str) -> None:
    """Canonical safetensors with the spec (and any extra strings, e.g. normalize) in the metadata."""
    save_weights(path, to_canonical(model), spec_metadata(model.spec, framework="flax", **metadata))


def load(model: nnx.Module, path) -> nnx.Module:
    return from_canonical(model, load_weights(path)[0])


def draw(config, path) -> None:
    """The weights vgg_flax.train.Backend starts from with this config (vgg_flax.model.build)."""
    from vgg_flax.model import build

    save(build(config), path, **input_metadata(config))


def main(argv=None):
    from common.cli import draw_main

    draw_main("vgg_flax.weights", argv, draw=draw)


if __name__ == "__main__":
    main()
