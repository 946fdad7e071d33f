"""The training recipe shared by the three frameworks: the learning rate at every step, which
parameters weight decay applies to, and starting from given weights (--init-from). No framework
is imported here; each `vgg_X.train` applies these decisions in its own idiom.

Learning rate (`learning_rate`), a pure function of the step and the test accuracies measured so
far, so that a resumed run follows the schedule exactly where the uninterrupted one would have:

    lr(step) = --lr * warmup(step) * schedule(step)

  warmup    linear over the first --warmup-epochs (per step): (k + 1) / W at step k < W steps, then 1
  constant  1
  step      --lr-factor ** (epoch // --lr-step-epochs)          (torchvision's StepLR, per epoch)
  cosine    (1 + cos(pi * t / T)) / 2 per step, t counted from the end of the warm-up, T the steps
            left after it (torch's CosineAnnealingLR with eta_min 0; never exactly 0: t < T)
  plateau   --lr-factor ** drops, a drop each time the test accuracy has not beaten its best for
            --plateau-patience epochs in a row (torch's ReduceLROnPlateau, mode 'max', threshold 0,
            cooldown 0): the paper's "decreased by a factor of 10 when the validation set accuracy
            stopped improving", reading the test accuracy each epoch already measures.

Every framework sets this value before each step (torch: the param groups' lr; Gluon:
trainer.set_learning_rate; optax: inject_hyperparams), so they follow one schedule by construction.

Weight decay (`decays`): L2 added to the gradient, g + wd * w, on convolution and dense weights only;
biases and batch-norm scales and shifts are left alone unless --decay-all.
"""

from __future__ import annotations

import math
import re

from .errors import WeightsError
from .weights import load_weights

_DECAYED = re.compile(r"(block\d+\.conv\d+|fc\d+)\.weight$")


def decays(canonical_name: str, decay_all: bool = False) -> bool:
    """Whether --weight-decay applies to this trainable parameter (a canonical name, common.weights):
    convolution and dense weights yes; biases and batch-norm weights (scales) and biases no, unless
    decay_all (the way torch.optim.SGD(weight_decay=) and Gluon's wd apply when nothing is excluded)."""
    return decay_all or bool(_DECAYED.match(canonical_name))


def plateau_drops(test_accs, patience: int) -> int:
    """How many times the plateau schedule has divided the learning rate after these epochs'
    test accuracies: a drop after `patience` epochs in a row without a new best, and the count
    of bad epochs starts again after each drop."""
    best, bad, drops = -math.inf, 0, 0
    for acc in test_accs:
        if acc > best:
            best, bad = acc, 0
        else:
            bad += 1
            if bad >= patience:
                drops, bad = drops + 1, 0
    return drops


def learning_rate(args, step: int, steps_per_epoch: int, test_accs=()) -> float:
    """The learning rate of global step `step` (0-based over the whole run), see the module's docstring.
    test_accs: the test accuracies of the epochs finished before this step (plateau only)."""
    total, epoch = args.epochs * steps_per_epoch, step // steps_per_epoch
    warm = round(args.warmup_epochs * steps_per_epoch)
    factor = (step + 1) / warm if step < warm else 1.0
    if args.lr_schedule == "step":
        factor *= args.lr_factor ** (epoch // args.lr_step_epochs)
    elif args.lr_schedule == "cosine" and step >= warm:
        factor *= 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    elif args.lr_schedule == "plateau":
        factor *= args.lr_factor ** plateau_drops(test_accs, args.plateau_patience)
    return args.lr * factor


def start_from(path, current: dict, partial: bool) -> tuple[dict, list[str], list[str]]:
    """The model's starting tensors from a canonical weights file (--init-from).

    current: the model's freshly drawn canonical tensors (name -> array). Whole (partial False):
    the file's tensors, which the framework's weights.load checks name by name and shape by shape
    (WeightsError). Partial: the paper's section 3.1 way of starting a deeper net from a trained
    shallower one: every tensor whose name and shape match is copied, the rest keep their draw.
    Returns (tensors, copied names, drawn names); raises WeightsError for a file with nothing in common."""
    given = load_weights(path)[0]
    if not partial:
        return given, list(given), []
    copied = [k for k, v in current.items() if k in given and tuple(given[k].shape) == tuple(v.shape)]
    if not copied:
        raise WeightsError(
            f"--init-partial: {path} has no tensor of this model's names and shapes (it holds "
            f"{', '.join(list(given)[:3])}{', ...' if len(given) > 3 else ''}); "
            "give weights of a model with layers in common, or leave out --init-from"
        )
    return {**current, **{k: given[k] for k in copied}}, copied, [k for k in current if k not in copied]


def describe_layers(names) -> str:
    """'block1.conv1, block2.conv1, fc3' from tensor names: one entry per layer, in order."""
    layers = []
    for n in names:
        layer = n.rsplit(".", 1)[0]
        if layer not in layers:
            layers.append(layer)
    return ", ".join(layers) or "nothing"
