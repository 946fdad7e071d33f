"""Command-line flags shared by the three frameworks, defined once."""
from __future__ import annotations

import argparse
import sys

from .arch import ArchError, make_spec, parse_arch, valid_names


def add_model_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--arch", default="vgg11", type=parse_arch,
                   help=f"a table name ({', '.join(valid_names())}) or the seeds' (num_convs, out_channels) "
                        "tuples, e.g. '((1,64),(1,128),(2,256),(2,512),(2,512))' (default: vgg11)")
    p.add_argument("--width-ratio", type=int, default=1, help="divide every block's channels by this (the seeds' ratio = 4)")
    p.add_argument("--scale-classifier", action="store_true", help="divide the 4096 hidden units by --width-ratio too (seed 001)")
    p.add_argument("--in-channels", type=int, default=1, help="1 for Fashion-MNIST, 3 for ImageNet")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.5)
    return p


def spec_kwargs(args, image_size) -> dict:
    return dict(in_channels=args.in_channels, num_classes=args.num_classes, image_size=image_size,
                width_ratio=args.width_ratio, scale_classifier=args.scale_classifier, dropout=args.dropout)


def fail(msg: str, code: int = 2):
    """Expected errors end with a message, not a traceback."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(code)


def model_main(prog, argv, *, build, summary, count):
    """`python -m vgg_X.model`: print the seeds' per-block shape summary and the parameter counts."""
    p = add_model_args(argparse.ArgumentParser(prog=f"python -m {prog}", description=summary.__module__ + ": VGG shape summary"))
    p.add_argument("--image-size", type=int, default=224, help="input height and width (at least 32 for five blocks)")
    args = p.parse_args(argv)
    try:
        make_spec(args.arch, **spec_kwargs(args, args.image_size))  # validate before any framework work
    except ArchError as e:
        fail(str(e))
    net = build(args.arch, **spec_kwargs(args, args.image_size))
    print(summary(net))
    params, buffers = count(net)
    print(f"trainable parameters: {params:,}   buffer values: {buffers:,}")
