"""Train a VGG on Fashion-MNIST with MXNet Gluon: `python -m vgg_gluon.train --help`.

The loop lives in `common.training`, the run's files and checkpoints in `common.runfiles`; this file
holds what is Gluon's own: a hybridized network (static graph, static memory), `autograd.record()`,
a `gluon.Trainer`, and checkpoints as `save_parameters` + `trainer.save_states`.
"""

from __future__ import annotations

import json
import math
import os
import pickle

import vgg_gluon  # noqa: F401  (restores np.bool before mxnet is imported)
from vgg_gluon import parallel, weights
from vgg_gluon.model import build, count_parameters

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from common import contract, training
from common.cli import main_guard, parse_train_args
from common.errors import CheckpointError, DeviceError, reason
from common.recipe import decays
from common.weights import input_metadata

loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()  # per example; mean over the batch via trainer.step


def train_step(net, trainer, xs, ys, batch_size):
    """One update on a batch split over the devices (one part per context, as the gluonbook's
    multi-GPU chapter): returns each context's (summed loss, #correct) as NDArrays, not read back,
    so that MXNet's engine can run ahead of Python. batch_size: the global batch."""
    with autograd.record():  # training mode: dropout on
        logits = [net(x) for x in xs]
        losses = [loss_fn(out, y) for out, y in zip(logits, ys)]
    autograd.backward(losses)
    # The KVStore sums every device's gradients; / global batch = the mean loss's gradient, as torch
    trainer.step(batch_size)
    return [loss.sum() for loss in losses], [(out.argmax(axis=1) == y).sum() for out, y in zip(logits, ys)]


class Adam(mx.optimizer.Adam):
    """Adam as torch and optax define it. MXNet adds eps to sqrt(v) before the bias correction:
    w -= lr*sqrt(c2)/c1 * m / (sqrt(v) + eps), with c1 = 1 - beta1^t, c2 = 1 - beta2^t, so its eps
    acts like eps/sqrt(c2) (3e-7 at the first step instead of 1e-8). Passing eps*sqrt(c2) to that
    same fused kernel gives torch's w -= lr * m_hat / (sqrt(v_hat) + eps) exactly."""

    def __init__(self, epsilon=1e-8, **kwargs):
        super().__init__(epsilon=epsilon, **kwargs)
        self.torch_epsilon = epsilon

    def update(self, index, weight, grad, state):
        t = self._index_update_count.get(index, self.begin_num_update) + 1  # the step super() is about to take
        self.epsilon = self.torch_epsilon * math.sqrt(1 - self.beta2**t)
        super().update(index, weight, grad, state)


class SGD(mx.optimizer.SGD):
    """SGD with momentum as torch and optax define it: v = momentum * v + g; w -= lr * v, where
    g = rescale_grad * grad + wd * w. MXNet's own SGD keeps m = momentum * m - lr * g; w += m, which
    is m = -lr * v only while the learning rate stays the same: after a change its momentum still
    carries the old rate (m = -lr_old * v), and the next update differs from torch's by
    (lr_new - lr_old) * momentum * v. Warm-up, step, cosine and plateau schedules change the rate,
    so here m is rescaled by lr_new / lr_old before each update at a new rate (m = -lr_new * v again),
    and the update itself stays MXNet's fused kernel (multi_sgd_mom_update: one call for several
    parameters; a Python update per parameter made 32 px training 1.6x slower, benchmarks/README.md)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.last_lr = {}  # parameter index -> the rate its momentum holds; saved with the optimiser

    def update_multi_precision(self, index, weight, grad, state):
        if self.momentum:
            for i, m in zip(*((index, state) if isinstance(index, (list, tuple)) else ([index], [state]))):
                lr, last = self._get_lr(i), self.last_lr.get(i)
                if last is not None and lr != last:
                    m *= lr / last
                self.last_lr[i] = lr
        super().update_multi_precision(index, weight, grad, state)

    def update(self, index, weight, grad, state):
        self.update_multi_precision(index, weight, grad, state)


def make_optimizer(net, args, kvstore=None):
    """A gluon.Trainer with the same update as vgg_torch.make_optimizer.
    sgd: torch's convention (SGD above). adam: see Adam above.
    --weight-decay: Gluon's wd (g + wd * w before either, L2-in-gradient for Adam as torch's),
    with param.wd_mult = 0 where common.recipe.decays says no (biases, batch norm) unless --decay-all."""
    wd = args.weight_decay
    if args.optimizer == "sgd":
        opt = SGD(learning_rate=args.lr, momentum=args.momentum, wd=wd)
    else:
        opt = Adam(learning_rate=args.lr, beta1=0.9, beta2=0.999, epsilon=1e-8, wd=wd)
    for name, p in weights.canonical_params(net).items():
        if p.grad_req != "null":
            p.wd_mult = 1.0 if decays(name, args.decay_all) else 0.0
    # One device: no kvstore. Several: the KVStore ('device', 'dist_sync') only sums the gradients and
    # each device updates its copy (update_on_kvstore=False), so the optimiser state stays here,
    # where trainer.save_states finds it whatever the number of devices.
    return gluon.Trainer(net.collect_params(), opt, kvstore=kvstore, update_on_kvstore=False if kvstore else None)


def predict(net, x, ctx) -> np.ndarray:
    """Float32 logits of a NumPy NCHW batch, as NumPy, in inference mode: outside autograd.record()
    Gluon runs dropout as identity and batch norm on running statistics, and keeps no tape.
    ctx: a context, or a list of them that the batch is split over (one part each)."""
    parts = gluon.utils.split_and_load(x, ctx if isinstance(ctx, list) else [ctx])
    return np.concatenate([net(part).astype("float32", copy=False).asnumpy() for part in parts])


def save_checkpoint(folder, net, trainer, epoch: int) -> None:
    """model.params (save_parameters) + trainer.states (optimiser) + state.json (epoch; the RNG
    is reseeded from (seed, epoch), see common.training.epoch_seed)."""
    net.save_parameters(str(folder / "model.params"))
    trainer.save_states(str(folder / "trainer.states"))
    (folder / "state.json").write_text(json.dumps({"epoch": epoch, "rng": "reseeded from (seed, epoch)"}))


# The classes that trainer.save_states pickles: the optimiser and its state's NDArrays.
_STATE_CLASSES = {
    ("builtins", "bytearray"),
    ("mxnet.ndarray.ndarray", "NDArray"),
    ("vgg_gluon.train", "SGD"),
    ("vgg_gluon.train", "Adam"),
}


class _Refused(pickle.UnpicklingError):
    """A class outside _STATE_CLASSES; the message is its name."""


class _StatesOnly(pickle.Unpickler):
    """trainer.load_states unpickles its file as it is, and unpickling can run any code: each file is
    first read with nothing but the classes above (what torch.load's weights_only does for PyTorch)."""

    def find_class(self, module, name):
        if (module, name) not in _STATE_CLASSES:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def load_checkpoint(folder, net, trainer) -> int:
    """Restore what save_checkpoint wrote; returns the epoch. A file that is not such a checkpoint
    raises CheckpointError, and trainer.states runs no code of its own (see _StatesOnly)."""
    ctx = next(iter(net.collect_params().values())).list_ctx()
    path = folder / "model.params"
    try:
        net.load_parameters(str(path), ctx=ctx)
        path = folder / "trainer.states"
        with open(path, "rb") as f:
            try:
                states = _StatesOnly(f).load()
            except _Refused as e:
                raise CheckpointError(
                    f"{path} is not a checkpoint this project wrote: it refers to {e}, which is "
                    "refused unread (unpickling it could run code)"
                ) from None
        # what save_states writes: ({parameter index: state}, the optimiser), for this trainer's optimiser
        indices = set(range(len(list(net.collect_params().keys()))))  # ParameterDict has no len()
        if not (
            isinstance(states, tuple)
            and len(states) == 2
            and isinstance(states[0], dict)
            and type(states[1]) is type(trainer.optimizer)
            and set(states[0]) <= indices
        ):
            raise CheckpointError(
                f"{path} is not a checkpoint this project wrote for this run: it holds no "
                f"{type(trainer.optimizer).__name__} state for this model"
            )
        trainer.load_states(str(path))
        path = folder / "state.json"
        return json.loads(path.read_text())["epoch"]
    except (
        mx.base.MXNetError,
        pickle.UnpicklingError,
        AssertionError,
        EOFError,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
    ) as e:
        raise CheckpointError(
            f"{path} is not a checkpoint this project wrote, or it is damaged ({reason(e)})"
        ) from None


class Backend:
    """MXNet Gluon's common.contract.Backend: what the shared loop drives."""

    framework = "gluon"

    def __init__(self, config):
        self.dp = parallel.setup(config)  # the contexts, and the KVStore that joins them (and the machines)
        self.ctx, self.primary, self.shard = self.dp.devices, self.dp.primary, self.dp.shard
        self.device, self.seed, self.batch_size = self.dp.describe, config.seed, config.batch_size
        self.inputs = input_metadata(config)  # what export records of the pixels
        if config.precision == "bfloat16":
            if any(c.device_type == "gpu" for c in self.ctx):
                raise DeviceError(
                    "--precision bfloat16: MXNet 1.9's AMP offers bfloat16 on the CPU only (oneDNN); use "
                    "--device cpu, or float32 on a GPU"
                )
            from mxnet.contrib import amp

            # before the network is built: AMP patches the operators to cast their inputs to bfloat16
            # (convolutions, dense layers) or float32 (softmax, the loss); the parameters stay float32
            amp.init(target_dtype="bfloat16")
        self.versions = {"mxnet": mx.__version__}
        # MXNet has no call that says how many OpenMP threads an operator uses; the environment decides
        self.threads = (
            f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
            if "OMP_NUM_THREADS" in os.environ
            else f"MXNET_OMP_MAX_THREADS={os.environ.get('MXNET_OMP_MAX_THREADS')}"
        )
        self.net = build(config)
        self.net.collect_params().reset_ctx(self.ctx)  # the drawn weights, copied to each context
        self.parameters = count_parameters(self.net)[0]
        # One batch shape in training (drop_last) and evaluation (padding): the static graph and
        # its memory are planned once.
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.trainer = make_optimizer(self.net, config, self.dp.kvstore)
        parallel.prepare(self.dp, self.trainer)  # several workers: all start from rank 0's weights

    def start_epoch(self, epoch):
        for i, c in enumerate(self.ctx):  # each device its own dropout masks
            mx.random.seed(training.epoch_seed(self.seed, epoch) + self.shard[0] * len(self.ctx) + i, ctx=c)

    def set_lr(self, lr):
        self.trainer.set_learning_rate(lr)

    def canonical(self):
        return weights.to_canonical(self.net)

    def load_canonical(self, tensors):
        weights.from_canonical(self.net, tensors)

    def train_step(self, x, y):
        # labels as float32: what SoftmaxCrossEntropyLoss and argmax's output compare with
        return train_step(self.net, self.trainer, *parallel.shard(self.dp, x, y), self.batch_size)

    def fetch(self, out):
        loss, correct = parallel.total(sum(v.asscalar() for v in out[0]), sum(v.asscalar() for v in out[1]))
        return loss, round(correct)

    def predict(self, x):
        return predict(self.net, x, self.ctx)

    def total(self, *values):
        return parallel.total(*values)  # several machines: over every worker's part

    def save_checkpoint(self, folder, epoch):
        save_checkpoint(folder, self.net, self.trainer, epoch)

    def export(self, path):
        weights.save(self.net, path, **self.inputs)

    def load_checkpoint(self, folder):
        return load_checkpoint(folder, self.net, self.trainer)


def main(argv=None):
    with main_guard():
        config = contract.TrainConfig.from_args(
            parse_train_args(
                argv,
                prog="python -m vgg_gluon.train",
                description="Train a VGG on Fashion-MNIST with MXNet Gluon (hybridized).",
            )
        )
        training.keep_freed_memory()  # this process's malloc keeps freed memory: faster, its peak kept until exit
        try:
            training.run(config, Backend)
        finally:
            parallel.cleanup()


if __name__ == "__main__":
    # Run the importable copy of this file, not __main__: trainer.save_states pickles the
    # optimiser, whose class must be found again as vgg_gluon.train.SGD or .Adam.
    from vgg_gluon.train import main as importable_main

    importable_main()
