"""`python -m vgg_{torch,gluon,flax}.evaluate --weights FILE.safetensors`: the Fashion-MNIST test
accuracy of canonical weights (common.weights), whichever framework wrote them.

The flags, the checks and the report are defined once here; each framework's evaluate.py
supplies `load_model(spec, tensors, device, cpu_workarounds=...)` (the last for Flax's
vgg_flax.xla_cpu; the other two ignore it), `pick_device(requested)` (the train command's rule,
common.training.pick_device) and `predict(net, x, device)`: the logits of one NCHW NumPy batch,
as a NumPy array (vgg_X.train.predict, which the training's evaluation calls too).
No framework is imported here.
"""

from __future__ import annotations

import argparse

from .cli import add_cpu_workarounds_arg, check_fits
from .data import Loader, load_fashion_mnist
from .errors import UsageError, WeightsError
from .weights import read_spec


def accuracy(predict, loader) -> float:
    """The fraction of the loader's images whose class `predict(x)` gets right."""
    correct = total = 0
    for x, y in loader:
        correct, total = correct + int((predict(x) == y).sum()), total + len(y)
    return correct / total


def evaluate_main(prog: str, argv, *, framework: str, pick_device, load_model, predict) -> float:
    """The evaluate command; raises the typed errors (common.errors) that main_guard, around it, reports."""
    p = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=f"Test accuracy on Fashion-MNIST, in {framework}, of weights saved by any of the three frameworks.",
    )
    p.add_argument(
        "--weights",
        required=True,
        metavar="FILE.safetensors",
        help="canonical weights with their spec in the metadata (vgg_X.weights.save)",
    )
    p.add_argument(
        "--data-dir",
        help="folder with the four Fashion-MNIST IDX files (default: $FASHION_MNIST_DIR, "
        "the cache, a download, else the bundled sample)",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="auto: the GPU when one is visible")
    add_cpu_workarounds_arg(p)
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec, tensors, metadata = read_spec(args.weights)
    h, w = spec.image_size
    if (spec.in_channels, spec.num_classes) != (1, 10) or h != w:
        raise WeightsError(
            f"{args.weights} holds a model for {spec.in_channels}x{h}x{w} inputs and {spec.num_classes} classes; "
            "Fashion-MNIST evaluation needs 1 channel, 10 classes and a square input"
        )
    try:
        check_fits(spec, "--batch-size", args.batch_size)
    except UsageError as e:
        raise WeightsError(f"{args.weights}: its metadata asks for {h}x{w} px images: {e}") from None
    data = load_fashion_mnist(args.data_dir)
    device = pick_device(args.device)
    net = load_model(spec, tensors, device, cpu_workarounds=args.cpu_workarounds)
    # the file says how its model saw images in training; the default is the loader's 0-1 scale
    normalize = metadata.get("normalize", "false").lower() in ("true", "1")
    loader = Loader(
        data.test_images, data.test_labels, batch_size=args.batch_size, resize=h, shuffle=False, normalize=normalize
    )
    acc = accuracy(lambda x: predict(net, x, device).argmax(1), loader)
    print(
        f"{framework} on {device}: {spec.name} ({h}x{h} px{', normalised' if normalize else ''}) "
        f"from {args.weights} (saved by {metadata.get('framework', 'unknown')})"
    )
    print(data.describe())
    print(f"test accuracy {acc:.4f} ({round(acc * len(data.test_labels)):,} / {len(data.test_labels):,})")
    return acc
