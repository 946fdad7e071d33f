"""VGG in Flax NNX, built from the shared tables in `common.arch`.

NHWC inside, as XLA prefers; `to_nhwc` transposes the loader's NCHW batches, wherever
a batch goes in (training, prediction, tests, benchmarks). Attribute names give the project's parameter scheme
(`block1.conv1.kernel`, `block1.bn1.mean`, `fc1.bias`, ...).

Plain Flax layers only: the rewrites that make XLA:CPU fast live in `vgg_flax.xla_cpu`,
which the train, evaluate and benchmark commands install on a model that runs on a CPU.
"""

from __future__ import annotations

from functools import partial
from math import prod

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from common.arch import INITS, LRN, format_summary, make_spec

__all__ = ["VGGBlock", "VGG", "vgg_block", "vgg", "build", "layer_shapes", "count_parameters", "summary", "to_nhwc"]


def to_nhwc(x):
    """The loader's NCHW batch -> Flax's NHWC: the one function that converts a batch's layout."""
    return jnp.transpose(x, (0, 2, 3, 1))


def _initializers(init: str):
    """(conv kernel, dense kernel) initialisers: the same distributions as vgg_torch.init_weights."""
    if init in ("xavier", "d2l"):  # Xavier/Glorot uniform
        return nnx.initializers.xavier_uniform(), nnx.initializers.xavier_uniform()
    if init == "kaiming":  # torchvision's; "normal", not he_normal's "truncated_normal", as torch's kaiming_normal_
        return nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), nnx.initializers.normal(0.01)
    raise ValueError(f"unknown init {init!r}; use one of {', '.join(INITS)}")


def _bias(init: str, fan_in: int):
    """d2l: PyTorch's default bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)); else zero (Flax's default).
    nnx.initializers.uniform draws from [0, scale), so the symmetric one is written out."""
    if init != "d2l":
        return nnx.initializers.zeros_init()
    bound = fan_in**-0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def local_response_norm(x, size=LRN["size"], alpha=LRN["alpha"], beta=LRN["beta"], k=LRN["k"]):
    """Across-channel LRN over the last (channel) axis, scaled by alpha / size like torch and MXNet."""
    window = jax.lax.reduce_window(
        x * x, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1), ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2))
    )
    return x / (k + alpha / size * window) ** beta


class VGGBlock(nnx.Module):
    def __init__(
        self, kernel_sizes, out_channels, in_channels, *, batch_norm=False, lrn=False, init="xavier", dtype=None, rngs
    ):
        conv_init, _ = _initializers(init)
        self.num_convs, self.batch_norm, self.lrn = len(kernel_sizes), batch_norm, lrn
        for j, k in enumerate(kernel_sizes, 1):
            conv = nnx.Conv(
                in_channels,
                out_channels,
                (k, k),
                padding="SAME",
                kernel_init=conv_init,
                bias_init=_bias(init, in_channels * k * k),
                dtype=dtype,
                rngs=rngs,
            )
            setattr(self, f"conv{j}", conv)
            if batch_norm:  # momentum and epsilon as torch's and Gluon's defaults
                setattr(self, f"bn{j}", nnx.BatchNorm(out_channels, momentum=0.9, epsilon=1e-5, rngs=rngs))
            in_channels = out_channels
        self.pool = partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2))

    def __call__(self, x):
        for j in range(1, self.num_convs + 1):
            x = getattr(self, f"conv{j}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{j}")(x)
            x = nnx.relu(x)
            if self.lrn and j == 1:
                x = local_response_norm(x)
        return self.pool(x)


def vgg_block(num_convs, out_channels, in_channels, *, kernel_sizes=None, **options) -> VGGBlock:
    """`num_convs` convolutions (3x3, 'same' padding) with ReLU, then a 2x2 max-pool. options: VGGBlock's
    batch_norm, lrn, init, dtype (the computation's: jnp.bfloat16 for mixed precision; parameters stay
    float32) and rngs."""
    return VGGBlock(kernel_sizes or (3,) * num_convs, out_channels, in_channels, **options)


class VGG(nnx.Module):
    def __init__(self, spec, *, init="xavier", dtype=None, rngs: nnx.Rngs):
        self.spec = spec
        cin = spec.in_channels
        for i, b in enumerate(spec.blocks, 1):
            setattr(
                self,
                f"block{i}",
                vgg_block(
                    b.num_convs,
                    b.out_channels,
                    cin,
                    kernel_sizes=b.kernel_sizes,
                    batch_norm=spec.batch_norm,
                    lrn=spec.lrn and i == 1,
                    init=init,
                    dtype=dtype,
                    rngs=rngs,
                ),
            )
            cin = b.out_channels
        _, dense_init = _initializers(init)
        h = spec.hidden_units
        dense = lambda n_in, n_out: nnx.Linear(  # noqa: E731
            n_in, n_out, kernel_init=dense_init, bias_init=_bias(init, n_in), dtype=dtype, rngs=rngs
        )
        self.fc1, self.fc2, self.fc3 = dense(spec.flat_features, h), dense(h, h), dense(h, spec.num_classes)
        self.dropout = nnx.Dropout(spec.dropout, rngs=rngs)

    def layers(self):
        """(name, callable) in order; the shape summary and __call__ both walk it."""
        blocks = [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, len(self.spec.blocks) + 1)]
        return blocks + [
            ("flatten", lambda x: x.reshape(x.shape[0], -1)),  # NHWC flattens in (H, W, C) order
            ("fc1", lambda x: self.dropout(nnx.relu(self.fc1(x)))),
            ("fc2", lambda x: self.dropout(nnx.relu(self.fc2(x)))),
            ("fc3", self.fc3),
        ]

    def __call__(self, x):
        for _, layer in self.layers():
            x = layer(x)
        return x


def vgg(arch="vgg11", *, init="xavier", rngs: nnx.Rngs | None = None, dtype=None, **spec_kwargs) -> VGG:
    """Build a VGG from a table name or d2l's `conv_arch` tuples (see vgg_torch.vgg). Input: NHWC.
    dtype: the convolutions' and dense layers' computation dtype (jnp.bfloat16 for mixed precision,
    as nnx.Conv and nnx.Linear take it); their parameters stay float32. None: float32 throughout."""
    return VGG(make_spec(arch, **spec_kwargs), init=init, dtype=dtype, rngs=rngs or nnx.Rngs(0))


def build(config) -> VGG:
    """The model a run starts from, wherever it is built (vgg_flax.train.Backend, the
    vgg_flax.weights --draw command): config.spec drawn with config.init from
    nnx.Rngs(params=config.seed, dropout=config.seed), computing in bfloat16 under --precision
    bfloat16 (the parameters stay float32). One function, so that the same flags always give the
    same start."""
    return vgg(
        config.spec,
        init=config.init,
        rngs=nnx.Rngs(params=config.seed, dropout=config.seed),
        dtype=jnp.bfloat16 if config.precision == "bfloat16" else None,
    )


def layer_shapes(model: VGG, batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape (NHWC for blocks) of each block and dense layer, traced abstractly: nothing computed.
    Works on a real model or on `nnx.eval_shape(lambda: vgg(...))`."""
    graphdef, state = nnx.split(model)

    def trace(state, x):
        m = nnx.merge(graphdef, state)
        m.eval()
        outs = []
        for _, layer in m.layers():
            x = layer(x)
            outs.append(x)
        return outs

    x = jax.ShapeDtypeStruct((batch, *model.spec.image_size, model.spec.in_channels), jnp.float32)
    shapes = jax.eval_shape(trace, state, x)
    return [(name, tuple(s.shape)) for (name, _), s in zip(model.layers(), shapes)]


def count_parameters(model: VGG) -> tuple[int, int]:
    """(trainable parameters, buffer values). Works on `nnx.eval_shape(lambda: vgg(...))` without allocating."""
    size = lambda kind: sum(prod(v.shape) for v in jax.tree.leaves(nnx.state(model, kind)))
    return size(nnx.Param), size(nnx.BatchStat)


def summary(model: VGG) -> str:
    return format_summary(layer_shapes(model), title=f"Flax {flax.__version__} (NHWC): {model.spec.name}")


def main(argv=None):
    """`python -m vgg_flax.model`: the shape summary and parameter counts (the command line lives in common.cli)."""
    from common.cli import model_main

    model_main("vgg_flax.model", argv, build=vgg, summary=summary, count=count_parameters)


if __name__ == "__main__":
    main()
