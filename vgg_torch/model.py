"""VGG in PyTorch, built from the shared tables in `common.arch`.

Parameter names follow the project's scheme (`block1.conv1.weight`,
`block1.bn1.running_mean`, `fc1.weight`, ...), the same in all three frameworks.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from common.arch import INITS, LRN, format_summary, make_spec

__all__ = ["vgg_block", "init_weights", "vgg", "build", "layer_shapes", "count_parameters", "summary"]


def vgg_block(num_convs, out_channels, in_channels, *, kernel_sizes=None, batch_norm=False, lrn=False):
    """`num_convs` convolutions (3x3, 'same' padding) with ReLU, then a 2x2 max-pool."""
    kernel_sizes = kernel_sizes or (3,) * num_convs
    layers = OrderedDict()
    for j, k in enumerate(kernel_sizes, 1):
        layers[f"conv{j}"] = nn.Conv2d(in_channels, out_channels, kernel_size=k, padding=k // 2)
        if batch_norm:
            layers[f"bn{j}"] = nn.BatchNorm2d(out_channels)
        layers[f"relu{j}"] = nn.ReLU(inplace=True)
        if lrn and j == 1:
            layers["lrn"] = nn.LocalResponseNorm(**LRN)
        in_channels = out_channels
    layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Sequential(layers)


def init_weights(net: nn.Module, init: str = "xavier") -> nn.Module:
    """xavier: Xavier-uniform weights, zero biases (the gluonbook, d2l's MXNet code).
    d2l: Xavier-uniform weights; the biases keep the draw the layers made when built, PyTorch's
    default uniform within +-1/sqrt(fan_in) (d2l's PyTorch train_ch6 re-draws only the weights).
    kaiming: Kaiming-normal fan-out convs, N(0, 0.01) dense layers, zero biases (torchvision)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init in ("xavier", "d2l"):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(m.weight, 0.0, 0.01)
            if init != "d2l":
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def vgg(arch="vgg11", *, init="xavier", **spec_kwargs) -> nn.Sequential:
    """Build a VGG from a table name ('vgg11', 'D', 'vgg16_bn', ...) or d2l's `conv_arch`
    tuples, (num_convs, out_channels) per block. spec_kwargs: in_channels, num_classes,
    image_size, width_ratio, scale_classifier, dropout, batch_norm."""
    spec = make_spec(arch, **spec_kwargs)
    layers, cin = OrderedDict(), spec.in_channels
    for i, b in enumerate(spec.blocks, 1):
        layers[f"block{i}"] = vgg_block(
            b.num_convs,
            b.out_channels,
            cin,
            kernel_sizes=b.kernel_sizes,
            batch_norm=spec.batch_norm,
            lrn=spec.lrn and i == 1,
        )
        cin = b.out_channels
    hidden = spec.hidden_units
    layers.update(
        flatten=nn.Flatten(),  # NCHW -> (C, H, W) order
        fc1=nn.Linear(spec.flat_features, hidden),
        relu1=nn.ReLU(inplace=True),
        dropout1=nn.Dropout(spec.dropout),
        fc2=nn.Linear(hidden, hidden),
        relu2=nn.ReLU(inplace=True),
        dropout2=nn.Dropout(spec.dropout),
        fc3=nn.Linear(hidden, spec.num_classes),
    )
    net = nn.Sequential(layers)
    net.spec = spec
    return init_weights(net, init)


def build(config) -> nn.Sequential:
    """The model a run starts from, wherever it is built (vgg_torch.train.Backend, the
    vgg_torch.weights --draw command): torch.manual_seed(config.seed), then config.spec drawn
    with config.init. One function, so that the same flags always give the same start."""
    torch.manual_seed(config.seed)
    return vgg(config.spec, init=config.init)


SUMMARY_LAYERS = ("block", "flatten", "fc")


def layer_shapes(net: nn.Sequential, batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Run a zero batch through the net and record the output shape of each block and dense layer."""
    spec = net.spec
    x = torch.zeros(batch, spec.in_channels, *spec.image_size, device=next(net.parameters()).device)
    rows = []
    with torch.no_grad():
        for name, layer in net.named_children():
            x = layer(x)
            if name.startswith(SUMMARY_LAYERS):
                rows.append((name, tuple(x.shape)))
    return rows


def count_parameters(net: nn.Module) -> tuple[int, int]:
    """(trainable parameters, buffer values); `num_batches_tracked` counters are not statistics."""
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    buffers = sum(b.numel() for n, b in net.named_buffers() if not n.endswith("num_batches_tracked"))
    return params, buffers


def summary(net: nn.Sequential) -> str:
    return format_summary(layer_shapes(net), title=f"PyTorch {torch.__version__}: {net.spec.name}")


def main(argv=None):
    """`python -m vgg_torch.model`: the shape summary and parameter counts (the command line lives in common.cli)."""
    from common.cli import model_main

    model_main("vgg_torch.model", argv, build=vgg, summary=summary, count=count_parameters)


if __name__ == "__main__":
    main()
