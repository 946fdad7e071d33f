"""`python -m vgg_{torch,gluon,flax}.evaluate --weights FILE.safetensors`: the Fashion-MNIST test
accuracy of canonical weights (common.weights), whichever framework wrote them.

The flags, the checks and the report are defined once here. The model is the train command's:
each framework's evaluate.py passes its `vgg_X.train.Backend`, built here from the file's spec
(every other training flag at its default), given the file's weights (`load_canonical`), and
measured by the training's own evaluation (common.training.evaluation_loader and accuracy, on
Backend.predict).
No framework is imported here.
"""

from __future__ import annotations

import argparse
import dataclasses

from .cli import add_cpu_workarounds_arg, check_fits, parse_train_args
from .contract import TrainConfig
from .data import load_fashion_mnist
from .errors import UsageError, WeightsError
from .training import accuracy, evaluation_loader
from .weights import read_inputs, read_spec


def evaluate_config(args, spec, normalize: bool, pixels: str = "float") -> TrainConfig:
    """The train command's config for the file's model: its spec, the evaluate flags (device,
    batch size, CPU workarounds), the file's pixels (scale and resize), and every other flag at its default
    (the optimiser that Backend builds then holds no state: SGD without momentum)."""
    defaults = TrainConfig.from_args(parse_train_args([]))
    return dataclasses.replace(
        defaults,
        spec=spec,
        resize=spec.image_size[0],
        batch_size=args.batch_size,
        device=args.device,
        cpu_workarounds=args.cpu_workarounds,
        normalize=normalize,
        pixels=pixels,
        data_dir=args.data_dir,
    )


def evaluate_main(prog: str, argv, *, framework: str, backend) -> float:
    """`python -m {prog}`: backend is the framework's vgg_X.train.Backend. Raises the typed errors
    (common.errors) that main_guard, around it, reports."""
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
        metavar="PATH",
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
    normalize, pixels = read_inputs(args.weights, metadata)  # the model sees images as in its training
    config = evaluate_config(args, spec, normalize, pixels)
    model = backend(config)  # --device: the train command's rule
    model.load_canonical(tensors)
    acc = accuracy(model, evaluation_loader(config, data, model.shard))
    print(
        f"{framework} on {model.device}: {spec.name} ({h}x{h} px{', normalised' if normalize else ''}"
        f"{', d2l pixels' if pixels == 'd2l' else ''}) "
        f"from {args.weights} (saved by {metadata.get('framework', 'unknown')})"
    )
    print(data.describe())
    print(f"test accuracy {acc:.4f} ({round(acc * len(data.test_labels)):,} / {len(data.test_labels):,})")
    return acc
