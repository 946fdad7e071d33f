"""One adapter per framework, so that tests loop over the three the same way; the small model
and run that the training tests use (SMALL, SMALL_RUN); the optimisers' NumPy reference.

Each adapter builds a model without allocating where its framework allows
(torch's meta device, Gluon before `initialize`, `nnx.eval_shape`), and reports
shapes in NCHW so that they compare with `common.arch` directly. Logits come from
`vgg_X.train.predict`, the function that training's evaluation and the evaluate command call.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np

from common.weights import expected_canonical

SAMPLE = Path(__file__).resolve().parents[1] / "common" / "data"  # the bundled Fashion-MNIST sample
# The small model of every training test: VGG-11 at width ratio 8, its classifier scaled too, at 32 px.
SMALL = ["--width-ratio", "8", "--scale-classifier", "--resize", "32"]
# SMALL trained on the sample in batches of 32, SGD with momentum on standardised pixels, no bars.
SMALL_RUN = [
    *SMALL,
    "--data-dir",
    str(SAMPLE),
    "--batch-size",
    "32",
    "--optimizer",
    "sgd",
    "--momentum",
    "0.9",
    "--normalize",
    "--no-progress",
]


def reference_update(optimizer, w, grads, lrs, *, weight_decay=0.0, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8):
    """The weights after the updates that each make_optimizer must make, written from torch's
    documentation in NumPy (float64): g + weight_decay * w, then SGD (v = momentum * v + g;
    w -= lr * v) or Adam (bias-corrected, eps outside the square root), at lrs[t] in step t."""
    w, m, v = w.astype(np.float64), 0.0, 0.0
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), 1):
        g = g + weight_decay * w
        if optimizer == "sgd":
            m = momentum * m + g
            w = w - lr * m
        else:
            m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
            w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return w


def random_canonical(spec, seed=0) -> dict[str, np.ndarray]:
    """Canonical weights drawn so that a misplaced tensor shows: He-uniform kernels (the signal
    keeps its scale through 19 layers, so the logits depend on the input), non-zero biases,
    batch-norm scales and shifts away from 1 and 0, running statistics away from 0 and 1."""
    rng, out = np.random.default_rng(seed), {}
    for name, shape in expected_canonical(spec).items():
        kind = name.rsplit(".", 1)[1]
        if kind == "weight" and len(shape) > 1:
            bound = np.sqrt(6 / np.prod(shape[1:]))
            x = rng.uniform(-bound, bound, shape)
        elif kind == "weight":  # batch-norm scale
            x = rng.uniform(0.5, 1.5, shape)
        elif kind == "running_var":
            x = rng.uniform(0.5, 2.0, shape)
        else:  # biases, batch-norm shifts, running means
            x = rng.normal(0.0, 0.05, shape)
        out[name] = x.astype(np.float32)
    return out


class Torch:
    name = "torch"

    def __init__(self):
        import torch

        import vgg_torch.model as m
        import vgg_torch.train as t

        self.torch, self.m, self.t = torch, m, t

    def abstract(self, arch, **kw):
        with self.torch.device("meta"):
            return self.m.vgg(arch, **kw)

    def shapes(self, net):
        return self.m.layer_shapes(net)

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        self.torch.manual_seed(0)
        return self.t.predict(self.m.vgg(arch, **kw).eval(), x_nchw, self.torch.device("cpu"))

    def params(self, arch, **kw):
        self.torch.manual_seed(0)
        return {k: v.numpy() for k, v in self.m.vgg(arch, **kw).state_dict().items()}

    # --- real models and the weight converter (tests/test_equivalence.py, tests/test_weights.py)

    def build(self, spec):
        return self.m.vgg(spec)

    @property
    def weights(self):
        import vgg_torch.weights as w

        return w

    def infer(self, net, x_nchw):
        net.eval()
        return self.t.predict(net, x_nchw, self.torch.device("cpu"))

    def _loss(self, net, x_nchw, y):
        net.train()  # batch norm on batch statistics; the tests set dropout to 0
        return self.torch.nn.functional.cross_entropy(net(self.torch.from_numpy(x_nchw)), self.torch.from_numpy(y))

    def loss_grads(self, net, x_nchw, y):
        """(mean softmax cross-entropy, canonical gradients) of one batch in training mode."""
        net.zero_grad()
        loss = self._loss(net, x_nchw, y)
        loss.backward()
        return loss.item(), {k: p.grad.numpy().copy() for k, p in net.named_parameters()}

    def sgd_step(self, net, x_nchw, y, lr):
        """One step of the framework's own plain SGD."""
        opt = self.torch.optim.SGD(net.parameters(), lr=lr)
        opt.zero_grad()
        self._loss(net, x_nchw, y).backward()
        opt.step()


class Gluon:
    name = "gluon"

    def __init__(self):
        import vgg_gluon.model as m  # first: vgg_gluon restores np.bool before mxnet is imported
        import vgg_gluon.train as t

        import mxnet as mx

        self.mx, self.m, self.t = mx, m, t

    def abstract(self, arch, **kw):
        return self.m.vgg(arch, **kw)  # shapes are known before initialize()

    def shapes(self, net):
        return self.m.layer_shapes(net)

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        net = self.m.vgg(arch, **kw)
        net.initialize(ctx=self.mx.cpu())
        net.hybridize()
        return self.t.predict(net, x_nchw, self.mx.cpu())

    def params(self, arch, **kw):
        net = self.m.vgg(arch, **kw)
        net.initialize(ctx=self.mx.cpu())
        return {k: p.data().asnumpy() for k, p in net._collect_params_with_prefix().items()}

    def build(self, spec):
        net = self.m.vgg(spec)
        net.initialize(ctx=self.mx.cpu())
        net.hybridize()
        return net

    @property
    def weights(self):
        import vgg_gluon.weights as w

        return w

    def infer(self, net, x_nchw):
        return self.t.predict(net, x_nchw, self.mx.cpu())

    def loss_grads(self, net, x_nchw, y):
        from mxnet import autograd, gluon

        with autograd.record(train_mode=True):
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(self.mx.nd.array(x_nchw)), self.mx.nd.array(y)).mean()
        loss.backward()
        grads = {
            self.weights._canonical_name(k): p.grad().asnumpy()
            for k, p in net._collect_params_with_prefix().items()
            if p.grad_req != "null"
        }
        return float(loss.asscalar()), grads

    def sgd_step(self, net, x_nchw, y, lr):
        from mxnet import autograd, gluon

        trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
        with autograd.record(train_mode=True):
            loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(self.mx.nd.array(x_nchw)), self.mx.nd.array(y))
        loss.backward()
        trainer.step(len(y))  # the Gluon idiom: summed per-example losses, the trainer divides by the batch


class Flax:
    name = "flax"

    def __init__(self):
        import jax
        from flax import nnx

        import vgg_flax.model as m
        import vgg_flax.train as t

        self.nnx, self.m, self.t = nnx, m, t
        self.device = jax.devices()[0]  # the default device, where models are built

    def abstract(self, arch, **kw):
        return self.nnx.eval_shape(lambda: self.m.vgg(arch, **kw))

    def shapes(self, net):  # NHWC -> NCHW for the blocks
        return [(n, (s[0], s[3], s[1], s[2]) if len(s) == 4 else s) for n, s in self.m.layer_shapes(net)]

    def count(self, net):
        return self.m.count_parameters(net)

    def logits(self, arch, x_nchw, **kw):
        model = self.m.vgg(arch, **kw)
        model.eval()
        return self.t.predict(model, x_nchw, self.device)

    def params(self, arch, **kw):
        state = self.nnx.state(self.m.vgg(arch, **kw), (self.nnx.Param, self.nnx.BatchStat))
        return {".".join(map(str, k)): np.asarray(v[...]) for k, v in self.nnx.to_flat_state(state)}

    def build(self, spec):
        return self.m.vgg(spec)

    @property
    def weights(self):
        import vgg_flax.weights as w

        return w

    def infer(self, model, x_nchw):
        model.eval()
        return self.t.predict(model, x_nchw, self.device)

    def _value_and_grad(self, model, x_nchw, y):
        import optax

        x = self.m.to_nhwc(x_nchw)
        model.train()  # batch norm on batch statistics; the tests set dropout to 0
        loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        return self.nnx.value_and_grad(loss_fn)(model)

    def loss_grads(self, model, x_nchw, y):
        loss, grads = self._value_and_grad(model, x_nchw, y)
        return float(loss), self.weights._canonical_from_state(grads, model.spec)

    def sgd_step(self, model, x_nchw, y, lr):
        import optax

        opt = self.nnx.Optimizer(model, optax.sgd(lr), wrt=self.nnx.Param)
        _, grads = self._value_and_grad(model, x_nchw, y)
        opt.update(model, grads)


ADAPTERS = {"torch": Torch, "gluon": Gluon, "flax": Flax}


@contextlib.contextmanager
def lock_held(path: Path):
    """Another process holding the flock on `path` (a run folder's .lock), as a running run or
    comparison does, with its process id written there; yields that process, killed at the end."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
            "print('locked', flush=True)\ntime.sleep(600)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()
