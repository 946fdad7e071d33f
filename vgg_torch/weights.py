"""PyTorch <-> the canonical weight format (common.weights), and torchvision's state_dicts.

The canonical format is PyTorch's own names and layouts, so the conversion is the
identity, less the `num_batches_tracked` counters (not weights; torch only).

    net = vgg("vgg16", in_channels=3, num_classes=1000)      # 224 px: torchvision's shape
    from_canonical(net, from_torchvision(torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict(), "vgg16"))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common.arch import make_spec
from common.errors import WeightsError
from common.weights import (
    check_compatible,
    expected_canonical,
    input_metadata,
    load_weights,
    save_weights,
    spec_metadata,
)


def to_canonical(net: nn.Module) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().to(torch.float32).numpy().copy()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def from_canonical(net: nn.Module, tensors: dict[str, np.ndarray]) -> nn.Module:
    """Copy canonical tensors into `net` in place, after checking that every name and shape fits."""
    check_compatible(expected_canonical(net.spec), tensors, f"this model ({net.spec.name})")
    state = net.state_dict()  # references to the live tensors: copy_ writes through, on their device
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(torch.from_numpy(np.require(v, np.float32, "W")))  # torch warns on read-only arrays
    return net


def save(net: nn.Module, path, **metadata: str) -> None:
    """Canonical safetensors with the spec (and any extra strings, e.g. normalize) in the metadata."""
    save_weights(path, to_canonical(net), spec_metadata(net.spec, framework="torch", **metadata))


def load(net: nn.Module, path) -> nn.Module:
    return from_canonical(net, load_weights(path)[0])


def from_torchvision(state_dict, arch="vgg11") -> dict[str, np.ndarray]:
    """torchvision's `vgg11 ... vgg19_bn` state_dict -> canonical tensors.

    torchvision numbers its layers: features.N walks conv, [bn], relu per convolution and
    one max-pool per block; classifier.0/3/6 are the dense layers (ReLU and dropout between).
    Only `arch`'s table row and batch norm matter here; from_canonical checks the shapes.
    torchvision ends its features with AdaptiveAvgPool2d((7, 7)), the identity on the 7x7 map of
    a 224-px input: at 224 px the two models compute the same function; at other sizes they differ."""
    spec = make_spec(arch)
    names, n = {}, 0
    for i, b in enumerate(spec.blocks, 1):
        for j in range(1, b.num_convs + 1):
            names[f"features.{n}"] = f"block{i}.conv{j}"
            if spec.batch_norm:
                names[f"features.{n + 1}"] = f"block{i}.bn{j}"
            n += 3 if spec.batch_norm else 2  # conv, [bn], relu
        n += 1  # max-pool
    names.update({"classifier.0": "fc1", "classifier.3": "fc2", "classifier.6": "fc3"})
    out = {}
    for key, value in state_dict.items():
        layer, _, param = key.rpartition(".")
        if param == "num_batches_tracked":
            continue
        if layer not in names:
            raise WeightsError(
                f"torchvision key {key} has no place in {spec.name} (its layers are "
                f"{', '.join(names)}); is the state_dict from another configuration?"
            )
        out[f"{names[layer]}.{param}"] = np.asarray(
            value.detach().cpu().float() if torch.is_tensor(value) else value, dtype=np.float32
        )
    return out


def draw(config, path) -> None:
    """The weights vgg_torch.train.Backend starts from with this config (vgg_torch.model.build)."""
    from vgg_torch.model import build

    save(build(config), path, **input_metadata(config))


def main(argv=None):
    from common.cli import draw_main

    draw_main("vgg_torch.weights", argv, draw=draw)


if __name__ == "__main__":
    main()
