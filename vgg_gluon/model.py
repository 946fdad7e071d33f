"""VGG in MXNet Gluon, built from the shared tables in `common.arch`.

The gluonbook idiom: `HybridSequential`, `nn.Conv2D(..., activation='relu')`,
`nn.Dense` that flattens its input, initialisers bound to the layers and
allocated by `net.initialize(ctx=...)`. Children are registered by name so that
`save_parameters` writes the project's scheme (`block1.conv1.weight`, `fc1.bias`).
"""

from __future__ import annotations

import mxnet as mx
from mxnet.gluon import nn

from common.arch import INITS, LRN, format_summary, make_spec

__all__ = ["vgg_block", "vgg", "build", "layer_shapes", "count_parameters", "summary"]


def _initializers(init: str):
    """(conv weight, dense weight) initialisers: the same distributions as vgg_torch.init_weights."""
    if init in ("xavier", "d2l"):  # Xavier/Glorot uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        xavier = mx.init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3)
        return xavier, xavier
    if init == "kaiming":  # torchvision: Kaiming-normal fan-out for convs, N(0, 0.01) for dense layers
        return mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), mx.init.Normal(0.01)
    raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")


def _bias(init: str, fan_in: int):
    """d2l: PyTorch's default bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); else zero (Gluon's default)."""
    return mx.init.Uniform(fan_in**-0.5) if init == "d2l" else "zeros"


def _named(seq: nn.HybridSequential, **layers) -> nn.HybridSequential:
    for name, layer in layers.items():
        seq.register_child(layer, name)  # HybridSequential runs its children in insertion order
    return seq


def vgg_block(num_convs, out_channels, in_channels, *, kernel_sizes=None, batch_norm=False, lrn=False, init="xavier"):
    """`num_convs` convolutions (3x3, 'same' padding) with ReLU, then a 2x2 max-pool."""
    kernel_sizes = kernel_sizes or (3,) * num_convs
    conv_init, _ = _initializers(init)
    blk = nn.HybridSequential()
    with blk.name_scope():
        for j, k in enumerate(kernel_sizes, 1):
            # with batch norm the ReLU must come after it, so it cannot live inside the conv
            conv = nn.Conv2D(
                out_channels,
                kernel_size=k,
                padding=k // 2,
                in_channels=in_channels,
                activation=None if batch_norm else "relu",
                weight_initializer=conv_init,
                bias_initializer=_bias(init, in_channels * k * k),
            )
            _named(blk, **{f"conv{j}": conv})
            if batch_norm:
                _named(blk, **{f"bn{j}": nn.BatchNorm(in_channels=out_channels), f"relu{j}": nn.Activation("relu")})
            if lrn and j == 1:
                _named(
                    blk,
                    lrn=nn.HybridLambda(
                        lambda F, x: F.LRN(x, alpha=LRN["alpha"], beta=LRN["beta"], knorm=LRN["k"], nsize=LRN["size"])
                    ),
                )
            in_channels = out_channels
        _named(blk, pool=nn.MaxPool2D(pool_size=2, strides=2))
    return blk


def vgg(arch="vgg11", *, init="xavier", **spec_kwargs) -> nn.HybridSequential:
    """Build a VGG from a table name or d2l's `conv_arch` tuples (see vgg_torch.vgg).
    Parameters are allocated by `net.initialize(ctx=...)`, the Gluon way."""
    spec = make_spec(arch, **spec_kwargs)
    _, dense_init = _initializers(init)
    net = nn.HybridSequential()
    with net.name_scope():
        cin = spec.in_channels
        for i, b in enumerate(spec.blocks, 1):
            blk = vgg_block(
                b.num_convs,
                b.out_channels,
                cin,
                kernel_sizes=b.kernel_sizes,
                batch_norm=spec.batch_norm,
                lrn=spec.lrn and i == 1,
                init=init,
            )
            _named(net, **{f"block{i}": blk})
            cin = b.out_channels
        h = spec.hidden_units
        _named(
            net,  # Dense flattens NCHW in (C, H, W) order, as torch's nn.Flatten does
            fc1=nn.Dense(
                h,
                activation="relu",
                in_units=spec.flat_features,
                weight_initializer=dense_init,
                bias_initializer=_bias(init, spec.flat_features),
            ),
            dropout1=nn.Dropout(spec.dropout),
            fc2=nn.Dense(
                h, activation="relu", in_units=h, weight_initializer=dense_init, bias_initializer=_bias(init, h)
            ),
            dropout2=nn.Dropout(spec.dropout),
            fc3=nn.Dense(spec.num_classes, in_units=h, weight_initializer=dense_init, bias_initializer=_bias(init, h)),
        )
    net.spec = spec
    return net


def build(config) -> nn.HybridSequential:
    """The model a run starts from, wherever it is built (vgg_gluon.train.Backend, the
    vgg_gluon.weights --draw command): mx.random.seed(config.seed), then config.spec drawn with
    config.init, on the CPU, where Gluon draws whatever the context (Backend then copies it to
    its contexts). One function, so that the same flags always give the same start."""
    mx.random.seed(config.seed)
    net = vgg(config.spec, init=config.init)
    net.initialize(ctx=mx.cpu())
    return net


def layer_shapes(net: nn.HybridSequential, batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape of each block and dense layer by symbolic shape inference: nothing allocated or computed."""
    spec = net.spec
    data_shape = (batch, spec.in_channels, *spec.image_size)
    x, rows = mx.sym.var("data"), []
    for name, layer in net._children.items():
        x = layer(x)
        if name.startswith(("block", "fc")):
            shape = tuple(x.infer_shape(data=data_shape)[1][0])
            if name == "fc1":  # Dense flattened its input on the way in
                rows.append(("flatten", (batch, spec.flat_features)))
            rows.append((name, shape))
    return rows


def count_parameters(net: nn.Block) -> tuple[int, int]:
    """(trainable parameters, buffer values). Shapes are known before `initialize`, so nothing is allocated."""
    params = buffers = 0
    for p in net.collect_params().values():
        size = 1
        for d in p.shape:
            size *= d
        if p.grad_req == "null":  # batch-norm running mean and variance
            buffers += size
        else:
            params += size
    return params, buffers


def summary(net: nn.HybridSequential) -> str:
    return format_summary(layer_shapes(net), title=f"MXNet Gluon {mx.__version__}: {net.spec.name}")


def main(argv=None):
    """`python -m vgg_gluon.model`: the shape summary and parameter counts (the command line lives in common.cli)."""
    from common.cli import model_main

    model_main("vgg_gluon.model", argv, build=vgg, summary=summary, count=count_parameters)


if __name__ == "__main__":
    main()
