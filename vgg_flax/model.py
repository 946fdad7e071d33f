"""VGG in Flax NNX, built from the shared tables in `common.arch`.

NHWC inside, as XLA prefers; the training script transposes the loader's NCHW
batches once. Attribute names give the project's parameter scheme
(`block1.conv1.kernel`, `block1.bn1.mean`, `fc1.bias`, ...).
"""
from __future__ import annotations

from math import prod

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from common.arch import LRN, format_summary, make_spec
from common.cli import model_main


def _initializers(init: str):
    """(conv kernel, dense kernel) initialisers: the same distributions as vgg_torch.init_weights."""
    if init == "xavier":  # Xavier/Glorot uniform
        return nnx.initializers.xavier_uniform(), nnx.initializers.xavier_uniform()
    if init == "kaiming":  # torchvision's recipe; "normal", not "truncated_normal" (he_normal's), as torch's kaiming_normal_
        return nnx.initializers.variance_scaling(2.0, "fan_out", "normal"), nnx.initializers.normal(0.01)
    raise ValueError(f"unknown init {init!r}; use 'xavier' or 'kaiming'")


@jax.custom_vjp
def dense_dot(x, kernel):
    """`x @ kernel` for nnx.Linear (its `dot_general` hook), with a backward pass that XLA:CPU runs fast.

    Autodiff computes dx = g @ kernel.T, and XLA:CPU lowers that by first copying the whole kernel
    transposed, with a loop that takes ~5x as long as the matmul itself (measured in jaxlib 0.7.1: a
    4096x4096 kernel, 150 ms against 21 ms; ~55 % of a VGG-11/4 training step at 32 px). Computing
    (kernel @ g.T).T instead transposes only the small g and the result; the optimisation barrier
    stops XLA's simplifier from rewriting it back. The values are the same dot products."""
    return x @ kernel


def _dense_dot_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_dot_bwd(residuals, g):
    x, kernel = residuals
    return jax.lax.optimization_barrier(kernel @ g.T).T, x.T @ g


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """nnx.Linear's call on a 2-D batch goes to dense_dot; anything else to lax.dot_general."""
    if lhs.ndim == 2 and dimension_numbers == (((1,), (0,)), ((), ())) and precision is None and not kwargs:
        return dense_dot(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


def _conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs):
    """nnx.Conv's `conv_general_dilated` hook: lax.conv_general_dilated, except for one case.

    XLA:CPU runs a 3x3 'same' convolution whose output is at most 2x2 (block 5 at 32 px) ~9x
    slower than it runs the same layer at 4x4, four times the work (jaxlib 0.7.1: 18 ms against
    2.8 ms for 128 channels, batch 128). There it is written as the matmul it is: the 3x3
    neighbourhoods side by side (im2col), times the kernel. The values are the same sums."""
    n, h, w, c = lhs.shape
    kh, kw, _, out = rhs.shape
    plain = (tuple(window_strides) == (1, 1) and kwargs.get("feature_group_count", 1) == 1
             and kwargs.get("precision") is None and "preferred_element_type" not in kwargs
             and all(tuple(kwargs.get(k) or (1, 1)) == (1, 1) for k in ("lhs_dilation", "rhs_dilation"))
             and kwargs.get("dimension_numbers") is not None
             and tuple(kwargs["dimension_numbers"].lhs_spec) == (0, 3, 1, 2))  # NHWC, HWIO
    same = [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)]  # 'SAME' at stride 1
    if not (plain and h * w <= 4 and (padding == "SAME" or [tuple(p) for p in padding] == same)):
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)
    x = jnp.pad(lhs, ((0, 0), *same, (0, 0)))
    cols = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)], axis=-1)
    return cols @ rhs.reshape(kh * kw * c, out)


def max_pool_2x2(x):
    """The 2x2, stride-2 max-pool as a reshape and a max: the values of nnx.max_pool(x, (2, 2),
    strides=(2, 2)), but XLA:CPU differentiates it ~9x faster than the reduce_window (whose
    gradient is a select_and_scatter): 2.5 ms against 23 ms for block 1's output at 32 px."""
    n, h, w, c = x.shape
    h, w = h // 2, w // 2
    return x[:, :2 * h, :2 * w].reshape(n, h, 2, w, 2, c).max(axis=(2, 4))


def local_response_norm(x, size=LRN["size"], alpha=LRN["alpha"], beta=LRN["beta"], k=LRN["k"]):
    """Across-channel LRN over the last (channel) axis, scaled by alpha / size like torch and MXNet."""
    window = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                   ((0, 0), (0, 0), (0, 0), (size // 2, (size - 1) // 2)))
    return x / (k + alpha / size * window) ** beta


class VGGBlock(nnx.Module):
    def __init__(self, kernel_sizes, out_channels, in_channels, *, batch_norm=False, lrn=False, init="xavier", rngs):
        conv_init, _ = _initializers(init)
        self.num_convs, self.batch_norm, self.lrn = len(kernel_sizes), batch_norm, lrn
        for j, k in enumerate(kernel_sizes, 1):
            setattr(self, f"conv{j}", nnx.Conv(in_channels, out_channels, (k, k), padding="SAME",
                                               kernel_init=conv_init,
                                               conv_general_dilated=_conv_general_dilated, rngs=rngs))
            if batch_norm:  # momentum and epsilon as torch's and Gluon's defaults
                setattr(self, f"bn{j}", nnx.BatchNorm(out_channels, momentum=0.9, epsilon=1e-5, rngs=rngs))
            in_channels = out_channels

    def __call__(self, x):
        for j in range(1, self.num_convs + 1):
            x = getattr(self, f"conv{j}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{j}")(x)
            x = nnx.relu(x)
            if self.lrn and j == 1:
                x = local_response_norm(x)
        return max_pool_2x2(x)


def vgg_block(num_convs, out_channels, in_channels, *, kernel_sizes=None, batch_norm=False, lrn=False,
              init="xavier", rngs: nnx.Rngs):
    """`num_convs` convolutions (3x3, 'same' padding) with ReLU, then a 2x2 max-pool."""
    return VGGBlock(kernel_sizes or (3,) * num_convs, out_channels, in_channels,
                    batch_norm=batch_norm, lrn=lrn, init=init, rngs=rngs)


class VGG(nnx.Module):
    def __init__(self, spec, *, init="xavier", rngs: nnx.Rngs):
        self.spec = spec
        cin = spec.in_channels
        for i, b in enumerate(spec.blocks, 1):
            setattr(self, f"block{i}", vgg_block(b.num_convs, b.out_channels, cin, kernel_sizes=b.kernel_sizes,
                                                  batch_norm=spec.batch_norm, lrn=spec.lrn and i == 1, init=init, rngs=rngs))
            cin = b.out_channels
        _, dense_init = _initializers(init)
        h = spec.hidden_units
        self.fc1 = nnx.Linear(spec.flat_features, h, kernel_init=dense_init, dot_general=_dense_dot_general, rngs=rngs)
        self.fc2 = nnx.Linear(h, h, kernel_init=dense_init, dot_general=_dense_dot_general, rngs=rngs)
        self.fc3 = nnx.Linear(h, spec.num_classes, kernel_init=dense_init, dot_general=_dense_dot_general, rngs=rngs)
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
    """Build a VGG from a table name or the seeds' tuples (see vgg_torch.vgg). Input: NHWC.
    dtype: the convolutions' and dense layers' computation dtype (e.g. jnp.bfloat16 for mixed
    precision); their parameters stay float32 (param_dtype). None: float32 throughout."""
    model = VGG(make_spec(arch, **spec_kwargs), init=init, rngs=rngs or nnx.Rngs(0))
    if dtype is not None:
        for _, m in model.iter_modules():
            if isinstance(m, (nnx.Conv, nnx.Linear)):
                m.dtype = dtype
    return model


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
    model_main("vgg_flax.model", argv, build=vgg, summary=summary, count=count_parameters)


if __name__ == "__main__":
    main()
