"""Train a VGG on Fashion-MNIST with PyTorch: `python -m vgg_torch.train --help`.

The loop lives in `common.training`, the run's files and checkpoints in `common.runfiles`; this file
holds what is PyTorch's own: eager training (optionally `torch.compile`d), the optimiser, and
checkpoints as safetensors (the model's state_dict, the project's canonical layout) plus a
`torch.save` file of optimiser and RNG state read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import pickle
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from common import contract, training
from common.cli import main_guard, parse_train_args
from common.errors import CheckpointError, reason
from common.recipe import decays
from common.weights import input_metadata
from vgg_torch import parallel, weights
from vgg_torch.model import build, count_parameters


def train_step(net, optimizer, x, y, dtype=None):
    """One update on a batch already on the device; returns (summed loss, #correct) as
    0-d tensors, not read back, so that a GPU can run ahead of Python. dtype (torch.bfloat16):
    mixed precision, the forward pass under autocast (the loss in float32, as autocast runs
    cross_entropy); the backward pass runs each op in its forward op's dtype."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        logits = net(x)
        loss = F.cross_entropy(logits, y)  # the batch mean, as d2l
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() * len(y), (logits.argmax(1) == y).sum()


def param_groups(net, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """--weight-decay on the parameters that common.recipe.decays names (conv and dense weights),
    none on the others (biases, batch-norm scales and shifts): two param groups."""
    named = list(net.named_parameters())
    decayed = [p for n, p in named if decays(n, decay_all)]
    rest = [p for n, p in named if not decays(n, decay_all)]
    groups = ({"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def make_optimizer(net, config):
    """sgd: v = momentum * v + g; w -= lr * v (torch's convention, optax's too).
    adam: betas (0.9, 0.999), eps 1e-8 added to the bias-corrected sqrt(v).
    --weight-decay: g + wd * w before either (torch's weight_decay; for Adam L2-in-gradient, not AdamW),
    on conv and dense weights only unless --decay-all (param_groups)."""
    groups = param_groups(net, config.weight_decay, config.decay_all)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    # fused: one kernel over all parameters (the CPU preset's step 487-588 -> 720-807 ex/s; benchmarks/README.md)
    return torch.optim.Adam(groups, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def set_lr(optimizer, lr: float) -> None:
    """The learning rate of the next step, in every param group (common.recipe.learning_rate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def predict(net, x, device, dtype=None) -> np.ndarray:
    """Float32 logits of a NumPy NCHW batch, as NumPy. Inference mode is the caller's `net.eval()`
    (dropout off, batch-norm running statistics); no tape is kept. dtype: autocast's, as in training."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return net(torch.from_numpy(x).to(device, non_blocking=True)).float().cpu().numpy()


def save_checkpoint(folder, net, optimizer, epoch: int) -> None:
    """model.safetensors (state_dict as is) + state.pt (optimiser, epoch, RNG states)."""
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors")
    )
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "rng": rng}, folder / "state.pt")
    (folder / "epoch.json").write_text(json.dumps({"epoch": epoch}))


def load_checkpoint(folder, net, optimizer) -> int:
    """Restore what save_checkpoint wrote; returns the epoch. Only tensors and plain containers
    are unpickled (`weights_only=True`); a file that is not such a checkpoint raises CheckpointError."""
    device = next(net.parameters()).device
    path = folder / "model.safetensors"
    try:
        net.load_state_dict(load_file(str(path), device=str(device)))
        path = folder / "state.pt"
        state = torch.load(path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["cpu"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        return state["epoch"]
    except pickle.UnpicklingError as e:  # not repeated: torch's text suggests turning the safe loader off
        found = re.search(r"GLOBAL (\S+)", str(e))
        why = (
            f"it refers to {found[1]}, which the safe loader refuses unread (unpickling it could run code)"
            if found
            else "the safe loader cannot read it as a file of tensors"
        )
        raise CheckpointError(f"{path} is not a checkpoint this project wrote: {why}") from None
    except (SafetensorError, RuntimeError, KeyError, IndexError, TypeError, ValueError, EOFError) as e:
        raise CheckpointError(
            f"{path} is not a checkpoint this project wrote, or it is damaged ({reason(e)})"
        ) from None


class Backend:
    """PyTorch's common.contract.Backend: what the shared loop drives."""

    framework = "torch"

    def __init__(self, config):
        self.dp = parallel.setup(config)  # under torchrun: this process's rank and device
        self.dev, self.primary, self.shard = self.dp.devices[0], self.dp.primary, self.dp.shard
        self.device, self.seed, self.inputs = self.dp.describe, config.seed, input_metadata(config)
        self.dtype = torch.bfloat16 if config.precision == "bfloat16" else None  # autocast's; the weights stay float32
        self.versions = {"torch": torch.__version__}
        self.threads = f"torch.get_num_threads() = {torch.get_num_threads()}"
        # Channels-last memory, oneDNN's and cuDNN's fast convolution layout (32 px training 840 -> 936
        # ex/s; benchmarks/README.md); the state_dict's names and values stay, only strides change.
        self.net = build(config).to(self.dev, memory_format=torch.channels_last)
        self.parameters = count_parameters(self.net)[0]
        self.optimizer = make_optimizer(self.net, config)
        # torch.compile traces the model on the first step (tens of seconds) and again for
        # evaluation; it pays off on long GPU runs, rarely on a short CPU one.
        self.model = parallel.prepare(self.dp, self.net)  # DistributedDataParallel with several processes
        self.model = torch.compile(self.model) if config.compile else self.model

    def start_epoch(self, epoch):
        torch.manual_seed(training.epoch_seed(self.seed, epoch) + self.shard[0])  # each process its own dropout masks
        self.net.train()

    def set_lr(self, lr):
        set_lr(self.optimizer, lr)

    def canonical(self):
        return weights.to_canonical(self.net)

    def load_canonical(self, tensors):
        weights.from_canonical(self.net, tensors)

    def train_step(self, x, y):
        return train_step(self.model, self.optimizer, *parallel.shard(self.dp, x, y), self.dtype)

    def fetch(self, out):
        loss, correct = parallel.total(*out)  # over every process's part of the global batch
        return loss, round(correct)

    def predict(self, x):
        self.net.eval()
        return predict(self.model, x, self.dev, self.dtype)

    def total(self, *values):
        return parallel.total(*values)  # data parallel: over every process's part

    def save_checkpoint(self, folder, epoch):
        save_checkpoint(folder, self.net, self.optimizer, epoch)

    def export(self, path):
        weights.save(self.net, path, **self.inputs)

    def load_checkpoint(self, folder):
        return load_checkpoint(folder, self.net, self.optimizer)


def main(argv=None):
    with main_guard():
        config = contract.TrainConfig.from_args(
            parse_train_args(
                argv,
                prog="python -m vgg_torch.train",
                description="Train a VGG on Fashion-MNIST with PyTorch (eager; --compile for torch.compile).",
            )
        )
        if parallel.launch(config, "vgg_torch.train", sys.argv[1:] if argv is None else argv):
            return  # --devices N: torchrun has run the N processes
        training.keep_freed_memory()  # this process's malloc keeps freed memory: faster, its peak kept until exit
        try:
            training.run(config, Backend)
        except BaseException:
            parallel.cleanup(together=False)
            raise
        parallel.cleanup()


if __name__ == "__main__":
    main()
