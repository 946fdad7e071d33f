"""vgg_flax.xla_cpu: the CPU workarounds compute the plain model's function, and the switch works.

The plain Flax model (vgg_flax.model: nnx.Conv, nnx.Linear, nnx.max_pool) is the reference; the
same model with the workarounds installed must give the same logits, the same gradient of every
parameter and the same SGD step. Two input sizes: 32 px, where block 5 convolves 2x2 maps (the
im2col path), and 64x96 px, non-square, where it does not.
"""

from argparse import Namespace

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
from flax import nnx  # noqa: E402

from common.arch import make_spec  # noqa: E402
from vgg_flax import train, xla_cpu  # noqa: E402
from vgg_flax.model import vgg  # noqa: E402

# Each tensor is compared against its own largest |value|. The two paths add the same float32
# products in different orders (im2col's one matmul against XLA's convolution loop; the kernel
# gradient summed over slices of the batch; kernel @ g.T against g @ kernel.T), so each sum may
# differ by a few units of float32 rounding (2^-24 ~ 6e-8) times about the square root of its number
# of terms (up to 36 x 64 x 96 for a kernel gradient here): ~1e-5 of its scale at the worst, and
# layers compound it. Measured: at most 1.4e-5 (fc2's SGD step). 5e-5 leaves room for that and still
# fails on any real error (a wrong kernel orientation, test_a_broken_workaround_is_caught, gives
# differences of order 1).
RTOL = 5e-5
SIZES = {"32px": 32, "64x96px": (64, 96)}


def _spec(arch, size):
    return make_spec(arch, image_size=size, width_ratio=8, scale_classifier=True, dropout=0.0)


def _pair(arch, size):
    plain, fast = (vgg(_spec(arch, size), rngs=nnx.Rngs(0)) for _ in range(2))
    assert xla_cpu.apply(fast, platform="cpu")
    return plain, fast


def _batch(spec, n=36):  # more than xla_cpu.KERNEL_GRAD_SLICE, in unequal slices (32 + 4)
    rng = np.random.default_rng(0)
    x = rng.random((n, *spec.image_size, spec.in_channels), dtype=np.float32)  # NHWC
    return x, rng.integers(0, spec.num_classes, n).astype(np.int32)


def _loss_grads(model, x, y):
    def loss_fn(m):
        logits = m(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (_, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    return logits, grads


def _flat(state):
    return {".".join(map(str, k)): np.asarray(v.value) for k, v in nnx.to_flat_state(state)}


def _differences(plain, fast, x, y) -> dict[str, float]:
    """max |difference| / max |value| of the logits, of each parameter's gradient, and of each
    parameter's change in one step of the train script's train_step (optax.sgd, lr 0.1)."""

    def rel(a, b, slack=0.0):
        return float(np.abs(a - b).max() / (max(np.abs(a).max(), np.abs(b).max()) + slack / RTOL + 1e-30))

    out, before, after = {}, [], []
    loss_grads = nnx.jit(lambda *a: _loss_grads(*a))  # a new jit, so that no earlier test's trace is reused
    for model in (plain, fast):
        model.train()  # batch norm (where there is one) on batch statistics; dropout is 0
        logits, grads = loss_grads(model, x, y)
        out.setdefault("logits", []).append(np.asarray(logits))
        for k, g in _flat(grads).items():
            out.setdefault(f"grad {k}", []).append(g)
        before.append(_flat(nnx.state(model, nnx.Param)))
        nnx.jit(train.train_step.fun)(
            model, nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param), x.transpose(0, 3, 1, 2), y
        )  # the train script's step, traced anew
        after.append(_flat(nnx.state(model, nnx.Param)))
    diffs = {k: rel(*v) for k, v in out.items()}
    for k in before[0]:
        # the change is read back as new - old, both rounded to float32: one rounding of the weight
        # (2^-24 of its size) comes on top of the change's own
        diffs[f"step {k}"] = rel(
            after[0][k] - before[0][k], after[1][k] - before[1][k], slack=2**-23 * np.abs(before[0][k]).max()
        )
    return diffs


@pytest.mark.parametrize("arch", ["vgg11"])
@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_workarounds_compute_the_plain_model(arch, size, monkeypatch):
    plain, fast = _pair(arch, size)
    x, y = _batch(plain.spec)
    ran = set()
    for name in ("_im2col", "_conv_one_channel", "_conv_grads"):
        original = getattr(xla_cpu, name)
        monkeypatch.setattr(xla_cpu, name, lambda *a, _f=original, _n=name: ran.add(_n) or _f(*a))
    diffs = _differences(plain, fast, x, y)
    # block 1 sees one channel; blocks 2-5 slice the kernel gradient; block 5 at 32 px sees 2x2 maps
    assert ran == {"_conv_one_channel", "_conv_grads"} | ({"_im2col"} if size == 32 else set()), ran
    assert len(diffs) == 1 + 2 * len(nnx.to_flat_state(nnx.state(plain, nnx.Param)))
    print(f"{arch} at {size}: largest relative difference {max(diffs.values()):.2g} ({max(diffs, key=diffs.get)})")
    bad = {k: v for k, v in diffs.items() if not v <= RTOL}
    assert not bad, f"{arch} at {size}: differences beyond {RTOL:g} of the scale: {bad}"


def test_a_broken_workaround_is_caught(monkeypatch):
    """The parity check above can fail: im2col with the kernel's H and W swapped (a plausible slip)
    changes block 5 at 32 px, and the check sees it."""
    plain, fast = _pair("vgg11", 32)
    real = xla_cpu._im2col
    calls = []

    def swapped(lhs, rhs, same):
        calls.append(lhs.shape)
        return real(lhs, rhs.transpose(1, 0, 2, 3), same)

    monkeypatch.setattr(xla_cpu, "_im2col", swapped)
    x, y = _batch(plain.spec)
    diffs = _differences(plain, fast, x, y)
    assert calls and all(s[1] * s[2] <= 4 for s in calls), "the im2col path did not run at 32 px"
    assert diffs["logits"] > 100 * RTOL and diffs["grad block5.conv2.kernel"] > 100 * RTOL, diffs


def test_the_pool_sends_a_tied_gradient_where_reduce_window_does():
    """A window [[1, 1], [0, 1]] has three maxima: reduce_window's gradient (the plain model's) goes
    wholly to the first in row-major order, the top left; jnp.max's rule would split it in three."""
    x = np.array([[1, 1], [0, 1]], np.float32).reshape(1, 2, 2, 1)
    for pool in (xla_cpu.max_pool_2x2, lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2))):
        y, vjp = jax.vjp(pool, x)
        assert float(y[0, 0, 0, 0]) == 1.0
        np.testing.assert_array_equal(vjp(np.ones_like(y))[0].reshape(2, 2), [[1, 0], [0, 0]])
    rng = np.random.default_rng(1)  # many ties, an odd width (the last column is dropped)
    x = rng.integers(0, 3, (2, 6, 7, 3)).astype(np.float32)
    g = rng.random((2, 3, 3, 3), dtype=np.float32)
    grads = [jax.vjp(p, x)[1](g)[0] for p in (xla_cpu.max_pool_2x2, lambda v: nnx.max_pool(v, (2, 2), strides=(2, 2)))]
    np.testing.assert_array_equal(*grads)


def _hooks(model):
    return (
        {m.conv_general_dilated for _, m in model.iter_modules() if isinstance(m, nnx.Conv)},
        {m.dot_general for _, m in model.iter_modules() if isinstance(m, nnx.Linear)},
        {m.pool for _, m in model.iter_modules() if hasattr(m, "pool")},
    )


def test_apply_installs_on_a_cpu_only():
    model = vgg(_spec("vgg11", 32))
    before = _hooks(model)
    state = nnx.state(model)
    assert not xla_cpu.apply(model, platform="gpu") and not xla_cpu.apply(model, platform="tpu")
    assert _hooks(model) == before and not xla_cpu.installed(model)
    assert xla_cpu.apply(model, platform="cpu") and xla_cpu.installed(model)
    convs, dots, pools = _hooks(model)
    assert convs == {xla_cpu.conv_general_dilated} and dots == {xla_cpu.dot_general} and pools == {xla_cpu.max_pool_2x2}
    assert [k for k, _ in nnx.to_flat_state(nnx.state(model))] == [k for k, _ in nnx.to_flat_state(state)]


@pytest.mark.parametrize("flags, on", [([], True), (["--no-cpu-workarounds"], False)])
def test_train_and_evaluate_switch(flags, on):
    """The train command's model and the evaluate command's get them on a CPU, unless told not to."""
    from common.cli import parse_train_args
    from common.evaluate import evaluate_config
    from vgg_flax import weights

    args = parse_train_args(
        [
            "--arch=vgg11",
            "--width-ratio=8",
            "--scale-classifier",
            "--resize=32",
            "--device=cpu",
            "--no-progress",
            *flags,
        ]
    )
    assert args.cpu_workarounds is on
    assert xla_cpu.installed(train.Backend(args).model) is on
    spec = _spec("vgg11", 32)
    tensors = weights.to_canonical(vgg(spec))
    config = evaluate_config(Namespace(batch_size=8, device="cpu", cpu_workarounds=on, data_dir=None), spec, False)
    b = train.Backend(config)  # what the evaluate command builds (common.evaluate)
    b.load_canonical(tensors)
    assert xla_cpu.installed(b.model) is on
