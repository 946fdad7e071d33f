"""XLA:CPU workarounds for the Flax VGG: the function of `vgg_flax.model`, computed in ways that
jaxlib's CPU backend runs faster. They change no parameter and no value beyond float32 rounding;
tests/test_flax_cpu.py checks logits, every gradient and an SGD step with and without them.

`apply(model, platform=...)` installs them on a built model, through the layers' own hooks
(`nnx.Conv.conv_general_dilated`, `nnx.Linear.dot_general`) and each block's `pool`; nothing in the
model's state changes, so checkpoints and weight files are the same either way. The train and
evaluate commands and `benchmarks.throughput` call it when the model runs on a CPU, unless given
`--no-cpu-workarounds`, which exists so that anyone can measure what they buy. On a GPU or TPU
it installs nothing: XLA's GPU kernels have none of these slow paths.

Each workaround names the measurement behind it: `python -m benchmarks.conv` (one layer),
`python -m benchmarks.throughput --frameworks flax [--no-cpu-workarounds]` (the training step) and
`python -m benchmarks.cpu_time --flax-variant default NAME=VALUE` (the step's CPU time with one of
the switches below changed); why the rest stays slow is in
benchmarks/README.md ("Flax on a CPU"), the figures and what was tried and not kept in
benchmarks/results/notes.md. The module-level switches exist for those measurements.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

ONE_CHANNEL = True  # block 1's one-channel convolution as nine scaled copies
IN_FLOAT32 = True  # bfloat16 layers (--precision bfloat16) computed in float32: it costs nothing
KERNEL_GRAD_SLICE = 32  # kernel gradients summed over slices of this many images (0: the whole batch)


# ---------------------------------------------------------------- the 2x2 max-pool
# Why: XLA:CPU differentiates nnx.max_pool's reduce_window through a select_and_scatter ~9x slower
# than a reshape + max (2.5 against 23 ms for block 1's output at 32 px; throughput: 32 px 376 -> 740
# examples/s together with the two below).


@jax.custom_vjp
def _window_max(x6):
    """(n, h, 2, w, 2, c) -> (n, h, w, c): the maximum of each 2x2 window."""
    return x6.max(axis=(2, 4))


def _window_max_fwd(x6):
    y = x6.max(axis=(2, 4))
    return y, (x6, y)


def _window_max_bwd(residuals, g):
    """The gradient reduce_window's gives: all of it to the first maximum of each window, in row-major
    order (select_and_scatter with `>=`). jnp.max's own rule would split it evenly among tied maxima,
    which differs where a window holds equal values (a flat region of an image, a saturated unit)."""
    x6, y = residuals
    hit = x6 == y[:, :, None, :, None]
    a, b, c, d = hit[:, :, 0, :, 0], hit[:, :, 0, :, 1], hit[:, :, 1, :, 0], hit[:, :, 1, :, 1]
    b, c, d = b & ~a, c & ~(a | b), d & ~(a | b | c)
    first = jnp.stack([jnp.stack([a, b], axis=3), jnp.stack([c, d], axis=3)], axis=2)
    return (jnp.where(first, g[:, :, None, :, None], jnp.zeros((), g.dtype)),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def max_pool_2x2(x):
    """nnx.max_pool(x, (2, 2), strides=(2, 2)) as a reshape and a max: the same values and gradients."""
    n, h, w, c = x.shape
    h, w = h // 2, w // 2
    return _window_max(x[:, : 2 * h, : 2 * w].reshape(n, h, 2, w, 2, c))


# ---------------------------------------------------------------- the dense layers' backward pass
# Why: autodiff computes dx = g @ kernel.T, and XLA:CPU lowers that by first copying the whole kernel
# transposed, with a loop that takes ~5x as long as the matmul itself (a 4096x4096 kernel: 150 ms
# against 21 ms; ~55 % of a VGG-11/4 training step at 32 px).


@jax.custom_vjp
def dense_dot(x, kernel):
    """`x @ kernel`, with dx computed as (kernel @ g.T).T: it transposes only the small g and the
    result; the optimisation barrier stops XLA's simplifier from rewriting it back. The same sums."""
    return x @ kernel


def _dense_dot_fwd(x, kernel):
    return x @ kernel, (x, kernel)


def _dense_dot_bwd(residuals, g):
    x, kernel = residuals
    return jax.lax.optimization_barrier(kernel @ g.T).T, x.T @ g


dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


def _dot(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """A 2-D batch times a kernel goes to dense_dot, anything else to lax.dot_general."""
    if lhs.ndim == 2 and dimension_numbers == (((1,), (0,)), ((), ())) and precision is None and not kwargs:
        return dense_dot(lhs, rhs)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


# ---------------------------------------------------------------- 3x3 convolutions on tiny maps
# Why: XLA:CPU runs a 3x3 'same' convolution whose output is at most 2x2 (block 5 at 32 px) ~9x slower
# than the same layer at 4x4, four times the work (18 against 2.8 ms for 128 channels, batch 128).


def _im2col(lhs, rhs, same):
    """The convolution as the matmul it is: the kh x kw neighbourhoods side by side, times the kernel."""
    n, h, w, c = lhs.shape
    kh, kw, _, out = rhs.shape
    x = jnp.pad(lhs, ((0, 0), *same, (0, 0)))
    cols = jnp.concatenate([x[:, i : i + h, j : j + w] for i in range(kh) for j in range(kw)], axis=-1)
    return cols @ rhs.reshape(kh * kw * c, out)


# ---------------------------------------------------------------- the kernel's gradient, batch by parts
# Why: XLA:CPU computes a convolution's kernel gradient faster as the sum of its parts over slices of
# 32 images than over the whole batch of 128 at once, which overflows the caches (one thread, batch
# 128, 48 px 16 -> 32 channels: 90 against 75 ms; 24 px 64 -> 64: 118 against 77 ms); the input's
# gradient and the forward pass are not (they get slower), so they stay whole.


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_split_kernel_grad(lhs, rhs, padding, dn):
    return jax.lax.conv_general_dilated(lhs, rhs, (1, 1), padding, dimension_numbers=dn)


def _conv_split_kernel_grad_fwd(lhs, rhs, padding, dn):
    return _conv_split_kernel_grad(lhs, rhs, padding, dn), (lhs, rhs)


def _conv_split_kernel_grad_bwd(padding, dn, residuals, g):
    return _conv_grads(*residuals, g, padding, dn)


def _conv_grads(lhs, rhs, g, padding, dn):
    """(input gradient, kernel gradient) of a stride-1 convolution; the second summed over slices of the batch."""
    conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=dn)
    dx = jax.vjp(lambda x: conv(x, rhs), lhs)[1](g)[0]
    n, step = lhs.shape[0], KERNEL_GRAD_SLICE or lhs.shape[0]
    dw = sum(jax.vjp(lambda k, i=i: conv(lhs[i : i + step], k), rhs)[1](g[i : i + step])[0] for i in range(0, n, step))
    return dx, dw


_conv_split_kernel_grad.defvjp(_conv_split_kernel_grad_fwd, _conv_split_kernel_grad_bwd)


# ---------------------------------------------------------------- 3x3 convolutions of one input channel
# Why: XLA:CPU's convolution of a one-channel image (block 1 on Fashion-MNIST) takes ~2.7x as long as
# the nine scaled copies of the image that it sums (one thread, 96 px, batch 128: 100 against 37 ms);
# its gradient for the kernel stays XLA's own convolution, which the sum would make slower.


@jax.custom_vjp
def _conv_one_channel(lhs, rhs):
    """lhs (n, h, w, 1) already padded for 'same', rhs (kh, kw, 1, out): the sum of kh x kw shifted,
    scaled copies of the image, one fused elementwise loop."""
    kh, kw, _, out = rhs.shape
    h, w = lhs.shape[1] - kh + 1, lhs.shape[2] - kw + 1
    return sum(lhs[:, i : i + h, j : j + w] * rhs[i, j] for i in range(kh) for j in range(kw))


def _conv_one_channel_fwd(lhs, rhs):
    return _conv_one_channel(lhs, rhs), (lhs, rhs)


def _conv_one_channel_bwd(residuals, g):
    lhs, rhs = residuals
    return _conv_grads(
        lhs, rhs, g, "VALID", jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    )


_conv_one_channel.defvjp(_conv_one_channel_fwd, _conv_one_channel_bwd)


def _conv(lhs, rhs, window_strides, padding, **kwargs):
    """lax.conv_general_dilated; for a stride-1 'same' convolution (NHWC, HWIO, no dilation or groups):
    _im2col when its output is at most 2x2, _conv_one_channel when its input has one channel, else
    _conv_split_kernel_grad."""
    n, h, w, c = lhs.shape
    kh, kw, _, out = rhs.shape
    plain = (
        tuple(window_strides) == (1, 1)
        and kwargs.get("feature_group_count", 1) == 1
        and kwargs.get("precision") is None
        and "preferred_element_type" not in kwargs
        and all(tuple(kwargs.get(k) or (1, 1)) == (1, 1) for k in ("lhs_dilation", "rhs_dilation"))
        and kwargs.get("dimension_numbers") is not None
        and tuple(kwargs["dimension_numbers"].lhs_spec) == (0, 3, 1, 2)  # NHWC
        and tuple(kwargs["dimension_numbers"].rhs_spec) == (3, 2, 0, 1)
    )  # HWIO
    same = [((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)]  # 'SAME' at stride 1
    if plain and (padding == "SAME" or [tuple(p) for p in padding] == same):
        if h * w <= 4:
            return _im2col(lhs, rhs, same)
        if c == 1 and ONE_CHANNEL:
            return _conv_one_channel(jnp.pad(lhs, ((0, 0), *same, (0, 0))), rhs)
        if KERNEL_GRAD_SLICE and n > KERNEL_GRAD_SLICE:
            return _conv_split_kernel_grad(lhs, rhs, tuple(map(tuple, same)), kwargs["dimension_numbers"])
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


# ---------------------------------------------------------------- bfloat16 layers in float32
# Why: XLA:CPU has no bfloat16 matrix-multiply or convolution kernel faster than its float32 ones: it
# widens to float32 inside (one thread, fc2's 128 x 4096 x 4096 product: 53 against 87 GFLOP/s; with
# --xla_cpu_use_onednn or --xla_cpu_use_xnnpack no faster either), and its bfloat16 elementwise work
# made the step slower still (0.64-0.94x float32 with the products widened to float32). So on a CPU
# the layers of a bfloat16 model compute in float32: --precision bfloat16 costs nothing there, and
# gains nothing; the parameters are float32 either way.


def conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs):
    """nnx.Conv's hook: _conv."""
    return _conv(lhs, rhs, window_strides, padding, **kwargs)


def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """nnx.Linear's hook: _dot."""
    return _dot(lhs, rhs, dimension_numbers, precision, **kwargs)


# ---------------------------------------------------------------- the switch


def apply(model: nnx.Module, *, platform: str) -> bool:
    """Install the workarounds on every nnx.Conv, nnx.Linear and 2x2 max-pool of `model` when
    `platform` (a jax.Device's) is 'cpu'; elsewhere leave the model as it is. Returns whether it
    installed them. Only the layers' functions and computation dtype change, not their parameters."""
    if platform != "cpu":
        return False
    for _, m in model.iter_modules():
        if isinstance(m, nnx.Conv):
            m.conv_general_dilated = conv_general_dilated
        elif isinstance(m, nnx.Linear):
            m.dot_general = dot_general
        if isinstance(m, (nnx.Conv, nnx.Linear)) and IN_FLOAT32 and m.dtype == jnp.bfloat16:
            m.dtype = jnp.float32
        if _is_max_pool_2x2(getattr(m, "pool", None)):
            m.pool = max_pool_2x2
    return True


def installed(model: nnx.Module) -> bool:
    """Whether `apply` has installed the workarounds on this model."""
    return any(getattr(m, "conv_general_dilated", None) is conv_general_dilated for _, m in model.iter_modules())


def _is_max_pool_2x2(f) -> bool:
    return (
        getattr(f, "func", None) is nnx.max_pool
        and not f.args
        and {k: tuple(v) if isinstance(v, list) else v for k, v in f.keywords.items()}
        in (
            {"window_shape": (2, 2), "strides": (2, 2)},
            {"window_shape": (2, 2), "strides": (2, 2), "padding": "VALID"},
        )
    )
