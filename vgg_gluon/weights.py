"""MXNet Gluon <-> the canonical weight format (common.weights).

Gluon's layouts are PyTorch's (Conv2D weight (O, I, kH, kW), Dense weight (out, in),
Dense flattening NCHW in (C, H, W) order), so the conversion is a rename: batch
norm's `gamma`/`beta` are the canonical `weight`/`bias`.
"""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from common.weights import (
    check_compatible,
    expected_canonical,
    input_metadata,
    load_weights,
    save_weights,
    spec_metadata,
)

_RENAME = {"gamma": "weight", "beta": "bias"}


def _canonical_name(name: str) -> str:
    layer, _, param = name.rpartition(".")
    return f"{layer}.{_RENAME.get(param, param)}"


def canonical_params(net: nn.Block) -> dict:
    """{canonical name: gluon.Parameter}. From the structural names (`block1.bn1.gamma`) that
    save_parameters writes; collect_params() would give the global prefixes (`hybridsequential0_..._gamma`)."""
    return {_canonical_name(k): p for k, p in net._collect_params_with_prefix().items()}


_params = canonical_params


def to_canonical(net: nn.Block) -> dict[str, np.ndarray]:
    return {k: p.data().asnumpy().astype(np.float32) for k, p in _params(net).items()}


def from_canonical(net: nn.Block, tensors: dict[str, np.ndarray], ctx=None) -> nn.Block:
    """Copy canonical tensors into `net` in place, after checking that every name and shape fits.
    A net not yet initialised is allocated on `ctx` (default: CPU), as load_parameters does."""
    check_compatible(expected_canonical(net.spec), tensors, f"this model ({net.spec.name})")
    params = _params(net)
    if any(p._data is None for p in params.values()):
        net.initialize(mx.init.Zero(), ctx=ctx or mx.cpu(), force_reinit=True)
    for k, v in tensors.items():
        params[k].set_data(mx.nd.array(np.asarray(v), dtype=np.float32))
    return net


def save(net: nn.Block, path, **metadata: str) -> None:
    """Canonical safetensors with the spec (and any extra strings, e.g. normalize) in the metadata."""
    save_weights(path, to_canonical(net), spec_metadata(net.spec, framework="gluon", **metadata))


def load(net: nn.Block, path, ctx=None) -> nn.Block:
    return from_canonical(net, load_weights(path)[0], ctx=ctx)


def draw(config, path) -> None:
    """The weights vgg_gluon.train.Backend starts from with this config (vgg_gluon.model.build)."""
    from vgg_gluon.model import build

    save(build(config), path, **input_metadata(config))


def main(argv=None):
    from common.cli import draw_main

    draw_main("vgg_gluon.weights", argv, draw=draw)


if __name__ == "__main__":
    main()
