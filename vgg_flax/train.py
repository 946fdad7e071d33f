"""Train a VGG on Fashion-MNIST with Flax NNX: `python -m vgg_flax.train --help`.

The loop lives in `common.training`, the run's files and checkpoints in `common.runfiles`; this file
holds what is Flax's own: an `nnx.Optimizer`, a train step compiled with `nnx.jit` around
`nnx.value_and_grad`, NHWC inside, and checkpoints as one safetensors file over the flattened
NNX state (model parameters, batch statistics, dropout RNG, optimiser state).

Why safetensors rather than orbax: the state is small and flat, a single file is what the other
two frameworks' checkpoints look like, and loading it runs no code (orbax would also do).
"""

from __future__ import annotations

import json
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from common import contract, training
from common.cli import main_guard, parse_train_args
from common.errors import CheckpointError, reason
from common.recipe import decays
from common.weights import input_metadata
from vgg_flax import parallel, weights, xla_cpu
from vgg_flax.model import build, count_parameters, to_nhwc


@nnx.jit
def train_step(model, optimizer, x, y):
    """One update on an NCHW batch; returns (summed loss, #correct) as device scalars, not read
    back, so that XLA can run ahead of Python. Compiled once per batch shape (training drops the
    last partial batch, so there is one)."""
    x = to_nhwc(x)  # the loader's NCHW -> Flax's NHWC

    def loss_fn(model):
        logits = model(x).astype(jnp.float32)  # bfloat16 layers (--precision): the loss in float32, as autocast
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits  # mean, as d2l

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)  # grads of nnx.Param only
    optimizer.update(model, grads)
    return loss * y.shape[0], (logits.argmax(-1) == y).sum()


def _canonical_name(path) -> str:
    """'block1.conv1.weight' for the parameter at path block1/conv1/kernel (common.weights' names)."""
    parts = [p for p in _name(path).split("/") if p != "value"]
    return ".".join(parts[:-1] + [{"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])])


def decay_mask(decay_all: bool):
    """optax mask for add_decayed_weights: True where common.recipe.decays says so (conv and dense
    kernels; not biases or batch-norm scales and shifts unless decay_all)."""
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: decays(_canonical_name(p), decay_all), params)


def make_optimizer(model, args):
    """The same update as vgg_torch.make_optimizer: optax.sgd keeps v = momentum * v + g and
    applies w -= lr * v, as torch; optax.adam adds eps to the bias-corrected sqrt(v), as torch.
    --weight-decay: optax.add_decayed_weights before the optimiser, g + wd * w (masked: common.recipe.decays),
    as torch's weight_decay. The learning rate is a hyperparameter injected into the state
    (optax.inject_hyperparams), which set_lr changes before each step (common.recipe.learning_rate)."""
    wd = args.weight_decay

    def tx(learning_rate):
        if args.optimizer == "sgd":
            opt = optax.sgd(learning_rate, momentum=args.momentum or None)  # None: no momentum buffer at all
        else:
            opt = optax.adam(learning_rate, b1=0.9, b2=0.999, eps=1e-8)
        return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask(args.decay_all)), opt) if wd else opt

    return nnx.Optimizer(model, optax.inject_hyperparams(tx)(learning_rate=args.lr), wrt=nnx.Param)


def set_lr(optimizer, lr: float) -> None:
    """The learning rate of the next update (a value in the optimiser state: no recompilation)."""
    optimizer.opt_state.hyperparams["learning_rate"].value = jnp.asarray(lr, jnp.float32)


@nnx.jit
def forward(model, x):
    """Float32 logits of an NCHW batch already on the device(s), left there (what `net(x)` is in
    the other two; compiled once per batch shape, apart from the train step)."""
    return model(to_nhwc(x)).astype(jnp.float32)


def predict(model, x, device) -> np.ndarray:
    """Float32 logits of a NumPy NCHW batch, as NumPy. Inference mode is the caller's `model.eval()`
    (dropout off, batch-norm running statistics). device: a jax Device, or vgg_flax.parallel's
    Context (data parallel: the batch split over its mesh; this process's rows come back)."""
    if isinstance(device, parallel.Context):
        return parallel.local_rows(device, forward(model, *parallel.shard(device, x)))
    return np.asarray(forward(model, jax.device_put(x, device)))


def _name(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(tree, prefix="") -> dict:
    """{'model/block1/conv1/kernel': array, ...}; typed PRNG keys as their raw uint32 data."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + _name(p): np.asarray(jax.random.key_data(v) if _is_key(v) else v) for p, v in leaves}


def save_checkpoint(folder, model, optimizer, epoch: int) -> None:
    """state.safetensors: every array of the model and the optimiser, named by its path
    ('model/block1/conv1/kernel', 'optimizer/opt_state/0/trace/...', 'model/dropout/rngs/key')."""
    arrays = {
        **_flatten(nnx.to_pure_dict(nnx.state(model)), "model/"),
        **_flatten(nnx.to_pure_dict(nnx.state(optimizer)), "optimizer/"),
    }
    save_file(arrays, str(folder / "state.safetensors"), metadata={"epoch": str(epoch)})
    (folder / "state.json").write_text(json.dumps({"epoch": epoch}))


def load_checkpoint(folder, model, optimizer) -> int:
    """Restore what save_checkpoint wrote; returns the epoch. A file that is not such a checkpoint
    raises CheckpointError (safetensors runs no code: the worst a foreign file does is not fit)."""
    path = folder / "state.safetensors"
    try:
        saved = load_file(str(path))
        for prefix, node in (("model/", model), ("optimizer/", optimizer)):
            state = nnx.state(node)

            def restore(p, leaf):
                name = prefix + _name(p)
                if name not in saved:
                    raise CheckpointError(
                        f"{path} is not a checkpoint this project wrote for this model: it has no {name}"
                    )
                v, want = saved[name], (jax.random.key_data(leaf) if _is_key(leaf) else leaf)
                if v.shape != want.shape:
                    raise CheckpointError(
                        f"{path} is not a checkpoint this project wrote for this model: {name} is "
                        f"{v.shape} in the file but {want.shape} here"
                    )
                v = jnp.asarray(v)
                return jax.random.wrap_key_data(v) if _is_key(leaf) else v

            nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(restore, nnx.to_pure_dict(state)))
            nnx.update(node, state)
        path = folder / "state.json"
        return json.loads(path.read_text())["epoch"]
    except (SafetensorError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path} is not a checkpoint this project wrote, or it is damaged ({reason(e)})"
        ) from None


class Backend:
    """Flax NNX's common.contract.Backend: what the shared loop drives."""

    framework = "flax"

    def __init__(self, config):
        self.dp = parallel.setup(config)  # a mesh over --devices devices (and over processes, if launched)
        self.dev, self.primary, self.shard = self.dp.devices[0], self.dp.primary, self.dp.shard
        jax.config.update("jax_default_device", self.dev)
        self.device, self.seed, self.inputs = self.dp.describe, config.seed, input_metadata(config)
        self.versions = {"flax": flax.__version__, "jax": jax.__version__}
        self.threads = f"XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset (all cores)')}"
        self.model = build(config)  # on jax_default_device
        if config.cpu_workarounds:  # on a CPU only (docs in vgg_flax/xla_cpu.py)
            xla_cpu.apply(self.model, platform=self.dev.platform)
        self.parameters = count_parameters(self.model)[0]
        self.optimizer = make_optimizer(self.model, config)
        parallel.prepare(self.dp, self.model, self.optimizer)  # replicated on every device of the mesh

    def start_epoch(self, epoch):
        nnx.reseed(self.model, dropout=training.epoch_seed(self.seed, epoch))
        parallel.prepare(self.dp, self.model)  # the new key too
        self.model.train()

    def set_lr(self, lr):
        set_lr(self.optimizer, lr)

    def canonical(self):
        return weights.to_canonical(self.model)

    def load_canonical(self, tensors):
        weights.from_canonical(self.model, tensors)
        parallel.prepare(self.dp, self.model)

    def train_step(self, x, y):
        return train_step(self.model, self.optimizer, *parallel.shard(self.dp, x, y.astype(np.int32)))

    def fetch(self, out):
        return float(out[0]), int(out[1])

    def predict(self, x):
        self.model.eval()
        return predict(self.model, x, self.dp)

    def total(self, *values):
        return parallel.total(*values)  # several processes: over every process's part

    def save_checkpoint(self, folder, epoch):
        save_checkpoint(folder, self.model, self.optimizer, epoch)

    def export(self, path):
        weights.save(self.model, path, **self.inputs)

    def load_checkpoint(self, folder):
        epoch = load_checkpoint(folder, self.model, self.optimizer)
        parallel.prepare(self.dp, self.model, self.optimizer)
        return epoch


def main(argv=None):
    with main_guard():
        config = contract.TrainConfig.from_args(
            parse_train_args(
                argv,
                prog="python -m vgg_flax.train",
                description="Train a VGG on Fashion-MNIST with Flax NNX (nnx.jit train step).",
            )
        )
        training.keep_freed_memory()  # this process's malloc keeps freed memory: faster, its peak kept until exit
        try:
            training.run(config, Backend)
        finally:
            parallel.cleanup()


if __name__ == "__main__":
    main()
