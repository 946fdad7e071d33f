"""Command-line flags shared by the three frameworks, defined once."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from . import signals
from .arch import INITS, make_spec, parse_arch, valid_names
from .data import PIXELS, check_data_dir
from .errors import ArchError, ProjectError, UsageError
from .weights import expected_canonical

# What the library raises for a user's mistake or circumstance; main_guard turns it into one line.
EXPECTED = ProjectError


def _arch(text):
    try:
        return parse_arch(text)
    except ArchError as e:  # argparse prints an ArgumentTypeError's text but hides a ValueError's
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument(
        "--arch",
        default="vgg11",
        type=_arch,
        help=f"a table name ({', '.join(valid_names())}) or d2l's conv_arch, (num_convs, "
        "out_channels) per block, e.g. '((1,64),(1,128),(2,256),(2,512),(2,512))' (default: vgg11)",
    )
    p.add_argument("--width-ratio", type=int, default=1, help="divide every block's channels by this (d2l's ratio = 4)")
    p.add_argument(
        "--scale-classifier",
        action="store_true",
        help="divide the 4096 hidden units by --width-ratio too (as d2lzh_pytorch's ratio = 8 does)",
    )
    p.add_argument("--in-channels", type=int, default=1, help="1 for Fashion-MNIST, 3 for ImageNet")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.5)
    return p


def model_spec(args, image_size):
    """The model that the flags of add_model_args describe, at this image size: the one mapping
    from flags to a common.arch spec (the train commands' TrainConfig carries what it returns)."""
    return make_spec(
        args.arch,
        in_channels=args.in_channels,
        num_classes=args.num_classes,
        image_size=image_size,
        width_ratio=args.width_ratio,
        scale_classifier=args.scale_classifier,
        dropout=args.dropout,
    )


def memory() -> int | None:
    """This machine's memory in bytes (None where sysconf cannot say: Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_fits(spec, smaller: str, batch: int = 1) -> None:
    """Refuse a model whose weights, or whose activations for `batch` images (the first block's
    output, the largest), outgrow this machine's memory (an absurd image size or number of classes),
    before a framework tries to allocate them and fails with a traceback. UsageError."""
    values = sum(math.prod(shape) for shape in expected_canonical(spec).values())  # parameters and buffers
    need, have = 4 * values, memory()  # float32
    if have is None:  # let the framework find out
        return
    h, w = spec.image_size
    if need > have:
        raise UsageError(
            f"{spec.name} for {h}x{w} px and {spec.num_classes:,} classes has {values:,} parameters, "
            f"{need / 2**30:,.1f} GiB of float32 weights, more than this machine's {have / 2**30:,.1f} GiB of "
            f"memory; use a smaller {smaller} or a larger --width-ratio"
        )
    activations = 4 * batch * spec.blocks[0].out_channels * h * w
    if activations > have:
        raise UsageError(
            f"{spec.name} at {h}x{w} px needs {activations / 2**30:,.1f} GiB for the first block's output of "
            f"{batch} image{'s' * (batch > 1)} alone, more than this machine's {have / 2**30:,.1f} GiB of memory; "
            f"use a smaller {smaller}"
        )


def _end(message: str, code: int):
    with contextlib.suppress(OSError):  # stderr may be a pipe whose reader is gone (a killed parent)
        print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)  # the one place the project ends a process


@contextlib.contextmanager
def main_guard():
    """The command line's edge, around everything a command does: the library's expected errors
    (common.errors) end as `error: message` on stderr and their exit code (2; some carry their
    own: 1 diverged, 130 / 143 interrupted); Ctrl-C ends with 130 and SIGTERM, handled the same
    way (common.signals), with 143; anything else is a bug and keeps its traceback."""
    with signals.handled():
        try:
            yield
        except EXPECTED as e:
            _end(str(e), e.code)
        except KeyboardInterrupt as e:
            _end(signals.what(e) + (f"; {e}" if str(e) else ""), signals.exit_code(e))


def model_main(prog, argv, *, build, summary, count):
    """`python -m vgg_X.model`: print d2l's per-block shape summary and the parameter counts.
    build(spec): the framework's network (vgg_X.model.vgg)."""
    p = add_model_args(
        argparse.ArgumentParser(prog=f"python -m {prog}", description=summary.__module__ + ": VGG shape summary")
    )
    p.add_argument("--image-size", type=int, default=224, help="input height and width (at least 32 for five blocks)")
    with main_guard():
        args = p.parse_args(argv)
        spec = model_spec(args, args.image_size)  # validate before any framework work
        check_fits(spec, "--image-size or --num-classes")
        net = build(spec)
        print(summary(net))
        params, buffers = count(net)
        print(f"trainable parameters: {params:,}   buffer values: {buffers:,}")


# ---------------------------------------------------------------------------- training flags

# Named presets: explicit flag values, applied as defaults, so any flag given on the
# command line still wins (`--preset cpu --epochs 3`).
PRESETS = {
    # The d2l recipe (d2l.train_ch6): a GPU job; d2l reports test accuracy 0.925 after 10 epochs.
    "d2l": dict(
        arch="vgg11",
        width_ratio=4,
        resize=224,
        epochs=10,
        batch_size=128,
        lr=0.05,
        optimizer="sgd",
        momentum=0.0,
        normalize=False,
        init="xavier",
    ),
    # For a laptop or a 2-core CI box: learns in one epoch. 32 px is 49x fewer pixels than 224.
    # There plain SGD at lr 0.05 stays at chance for the whole epoch; Adam (d2lzh_pytorch's optimiser)
    # on standardised pixels learns fastest of what was tried (docs/training.md).
    "cpu": dict(
        arch="vgg11",
        width_ratio=4,
        resize=32,
        epochs=1,
        batch_size=128,
        lr=0.001,
        optimizer="adam",
        momentum=0.0,
        normalize=True,
        init="xavier",
    ),
    # The paper's recipe (section 3.1), adapted to Fashion-MNIST where it must be (PRESET_HELP says where).
    "paper": dict(
        arch="vgg11",
        width_ratio=1,
        resize=224,
        epochs=74,
        batch_size=256,
        lr=0.01,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=5e-4,
        dropout=0.5,
        lr_schedule="plateau",
        lr_factor=0.1,
        plateau_patience=2,
        normalize=True,
        init="xavier",
        augment=True,
    ),
}

PRESET_HELP = """\
presets (each sets the flags below as defaults; flags you give still win):
  d2l  the default: the d2l recipe (d2l.train_ch6), VGG-11 at width ratio 4, 224 px,
       SGD lr 0.05, batch 128, 10 epochs, Xavier init. Made for a GPU (d2l reports test
       accuracy 0.925); on a CPU one epoch at 224 px takes hours. d2l's PyTorch code exactly:
       add --init d2l --pixels d2l (its biases and its resize); it also trains on each epoch's
       last partial batch, which this project drops.
  cpu  for a CPU (a laptop, a 2-core box): 32 px, Adam lr 0.001, pixels standardised with the
       training set's mean and std, 1 epoch: 0.86 test accuracy in each framework, one epoch
       taking 2-8 minutes on 2 busy cores. (Plain SGD lr 0.05 at 32 px stays at chance.)
       = {cpu}
  paper  the paper's recipe (section 3.1): net A (VGG-11) at full width, batch 256, SGD with
         momentum 0.9, weight decay 5e-4, dropout 0.5 on the first two dense layers, lr 0.01
         divided by 10 when the accuracy stops improving (here: 2 epochs without a new best
         test accuracy; the paper does not say how long it waited), 74 epochs, random crops and
         horizontal flips. Adapted to Fashion-MNIST: 1 input channel and 10 classes (not RGB and
         1000); the 28 px images upsampled to the paper's 224 px crop instead of crops of images
         rescaled to 256 px and larger, the crops made by padding (--augment) and no RGB colour
         shift (grey images); pixels standardised (the paper subtracted the mean RGB value);
         Xavier initialisation, which the paper's footnote names instead of its pre-training of
         the deeper nets from net A (for that: --init-from A.safetensors --init-partial); the
         plateau read on the test set, as the paper read its validation set. A GPU job.
         = {paper}
"""


def _positive(kind, name):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not v > 0 or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a positive finite number, got {text!r}")
        return v

    return parse


SEED_MAX = 2**32 - 1  # what every framework's generator takes alike (NumPy's refuses negatives, MXNet's wraps at 2**32)


def seed_arg(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"--seed must lie in 0 to {SEED_MAX} (2**32 - 1, the range all three frameworks take), got {text}"
        )
    return v


def _unit_interval(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--momentum must be a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"--momentum must lie in [0, 1), got {text!r} (0.9 is usual)")
    return v


def add_train_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every training flag, for all three frameworks (and `common.compare`, which passes them on)."""
    add_model_args(p)
    d = PRESETS["d2l"]
    p.set_defaults(width_ratio=d["width_ratio"])
    g = p.add_argument_group("training")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named set of defaults (see below)")
    g.add_argument(
        "--resize",
        type=_positive(int, "--resize"),
        default=d["resize"],
        help="resize Fashion-MNIST's 28x28 images to this many pixels (at least 32; default %(default)s)",
    )
    g.add_argument("--epochs", type=_positive(int, "--epochs"), default=d["epochs"], help="default %(default)s")
    g.add_argument(
        "--batch-size", type=_positive(int, "--batch-size"), default=d["batch_size"], help="default %(default)s"
    )
    g.add_argument("--lr", type=_positive(float, "--lr"), default=d["lr"], help="learning rate (default %(default)s)")
    g.add_argument(
        "--optimizer",
        choices=("sgd", "adam"),
        default=d["optimizer"],
        help="sgd: torch.optim.SGD semantics (v = momentum*v + g; w -= lr*v); "
        "adam: betas 0.9, 0.999, eps 1e-8 (default %(default)s)",
    )
    g.add_argument("--momentum", type=_unit_interval, default=d["momentum"], help="SGD momentum (default %(default)s)")
    g.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=d["normalize"],
        help="standardise pixels with the training set's mean and std (d2l: off, 0-1 pixels)",
    )
    g.add_argument(
        "--pixels",
        choices=PIXELS,
        default="float",
        help="float: scale the pixels to 0-1 (and standardise), then resize them bilinearly (the "
        "default); d2l: as d2l's data loader, resize the 0-255 image with Pillow's bilinear filter, "
        "rounded to whole values, then scale to 0-1 (every pixel a whole multiple of 1/255). They "
        "differ by up to 1/255 a pixel",
    )
    g.add_argument(
        "--init",
        choices=INITS,
        default=d["init"],
        help="xavier: Xavier-uniform weights, zero biases (the gluonbook, d2l's MXNet code); d2l: "
        "Xavier-uniform weights, biases uniform within +-1/sqrt(fan_in) as PyTorch draws them (d2l's "
        "PyTorch code); kaiming: torchvision's Kaiming-normal fan-out, zero biases (default %(default)s)",
    )
    g.add_argument(
        "--seed",
        type=seed_arg,
        default=0,
        help=f"one seed for initialisation, batch order and dropout, 0 to {SEED_MAX} (default 0)",
    )
    g.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto: the framework's first GPU if it sees one, else the CPU (default auto)",
    )
    g.add_argument(
        "--devices",
        type=_positive(int, "--devices"),
        metavar="N",
        help="data parallelism over N devices of this machine (default 1; under a launcher, what it "
        "started: torchrun's processes, all local devices of a jax.distributed process). "
        "--batch-size is the GLOBAL batch, split evenly over all devices of all machines, and "
        "--lr applies to it unscaled, so the same flags compute the same updates on any number "
        "of devices (docs/parallel.md)",
    )
    g.add_argument(
        "--data-dir",
        metavar="PATH",
        help="folder with the four Fashion-MNIST files (default: $FASHION_MNIST_DIR, "
        "the download cache, else the bundled sample)",
    )
    g.add_argument(
        "--max-steps",
        type=_positive(int, "--max-steps"),
        help="stop each epoch after this many batches (smoke runs); evaluation still sees the whole test set",
    )
    g.add_argument(
        "--out",
        help="folder for metrics.json, the plot, model.safetensors and the checkpoint (default runs/<framework>)",
    )
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an --out that holds another run's checkpoint (refused without it); that "
        "checkpoint stays until this run's first one replaces it",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="PyTorch: torch.compile the model. Gluon always hybridizes and Flax always jits, so "
        "they accept and ignore it",
    )
    add_cpu_workarounds_arg(g)
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    add_recipe_args(p)
    return p


def _non_negative(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 <= v < float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number >= 0, got {text!r}")
        return v

    return parse


def add_recipe_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Starting weights, weight decay, the learning-rate schedule, augmentation and precision
    (common.recipe holds the arithmetic; each framework applies it the same way)."""
    g = p.add_argument_group("recipe (the same arithmetic in the three frameworks; common/recipe.py)")
    g.add_argument(
        "--init-from",
        metavar="FILE",
        help="start from these weights instead of drawing them: a canonical safetensors file (a run's "
        "model.safetensors, or what vgg_X.weights.save writes). Its names and shapes must be the "
        "model's, as for the evaluate commands",
    )
    g.add_argument(
        "--init-partial",
        action="store_true",
        help="with --init-from: copy only the tensors whose name and shape match, draw the others "
        "(--init), and list both; the paper's section 3.1 way of starting a deeper net from a "
        "trained shallower one (e.g. VGG-13 from VGG-11: blocks' first convolutions and the dense "
        "layers). A file with nothing in common is refused",
    )
    g.add_argument(
        "--weight-decay",
        type=_non_negative("--weight-decay"),
        default=0.0,
        metavar="WD",
        help="L2 penalty added to the gradient (g + WD*w) before the optimiser, as "
        "torch.optim.SGD/Adam(weight_decay=), Gluon's wd and optax.add_decayed_weights before the "
        "optimiser compute it. With --optimizer adam this is L2-in-gradient Adam (torch.optim.Adam's "
        "weight_decay, the decay scaled by Adam's step size), not AdamW. Convolution and dense "
        "weights only, unless --decay-all (default %(default)s; the paper: 5e-4)",
    )
    g.add_argument(
        "--decay-all", action="store_true", help="apply --weight-decay to biases and batch-norm scales and shifts too"
    )
    g.add_argument(
        "--lr-schedule",
        choices=("constant", "step", "cosine", "plateau"),
        default="constant",
        help="constant; step: multiply by --lr-factor every --lr-step-epochs epochs; cosine: from --lr "
        "down towards 0 over the run, per step, after the warm-up; plateau: multiply by --lr-factor "
        "when the test accuracy has not beaten its best for --plateau-patience epochs. The paper "
        "divided by 10 when its validation accuracy stopped improving, and its validation set was "
        "ILSVRC's, the set it reported on; Fashion-MNIST has no validation split, so plateau reads "
        "the test accuracy that each epoch measures (the test set then guides training; hold-out "
        "data would shrink the training set of every other recipe). Default %(default)s",
    )
    g.add_argument(
        "--warmup-epochs",
        type=_non_negative("--warmup-epochs"),
        default=0.0,
        metavar="E",
        help="linear warm-up over the first E epochs (fractions allowed), updated every step: step k "
        "of W uses lr*(k+1)/W; any schedule follows (default 0)",
    )
    g.add_argument(
        "--lr-step-epochs",
        type=_positive(int, "--lr-step-epochs"),
        default=30,
        metavar="N",
        help="--lr-schedule step: epochs between decays (default %(default)s, torchvision's reference)",
    )
    g.add_argument(
        "--lr-factor",
        type=_positive(float, "--lr-factor"),
        default=0.1,
        help="--lr-schedule step and plateau: multiply the learning rate by this (default %(default)s)",
    )
    g.add_argument(
        "--plateau-patience",
        type=_positive(int, "--plateau-patience"),
        default=2,
        metavar="N",
        help="--lr-schedule plateau: epochs without a new best test accuracy before a decay (default %(default)s)",
    )
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="random crops of the image padded by 4 px at 32 px (scaled with --resize: 28 at 224) and "
        "random horizontal flips, drawn in common/data.py from (--seed, epoch, batch): every "
        "framework sees the same pixels (default off)",
    )
    g.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16: mixed precision, the parameters and the optimiser stay float32: PyTorch autocast, "
        "MXNet AMP (mxnet.contrib.amp, CPU only), Flax layers with dtype bfloat16 and param_dtype "
        "float32. Training and evaluation alike (default %(default)s)",
    )
    return p


def add_cpu_workarounds_arg(p) -> None:
    """--no-cpu-workarounds, for the train and evaluate commands (and, under its own name, the benchmark)."""
    p.add_argument(
        "--no-cpu-workarounds",
        dest="cpu_workarounds",
        action="store_false",
        help="Flax on a CPU: leave out vgg_flax.xla_cpu, the rewrites of the max-pool, the dense layers' "
        "backward pass, some 3x3 convolutions and bfloat16 products that XLA:CPU runs faster (the "
        "same values; never used on a GPU or TPU). It exists so that anyone can measure what they "
        "buy. PyTorch and Gluon need none, so they accept and ignore it",
    )


def train_parser(prog: str, description: str) -> argparse.ArgumentParser:
    return add_train_args(
        argparse.ArgumentParser(
            prog=prog,
            description=description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=PRESET_HELP.format(cpu=preset_flags("cpu"), paper=preset_flags("paper")),
        )
    )


def preset_flags(name: str) -> str:
    """A preset as the command-line flags it stands for."""
    flags = []
    for k, v in PRESETS[name].items():
        flag = "--" + k.replace("_", "-")
        flags.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {v}")
    return " ".join(flags)


def parse_train_args(
    argv=None, *, prog="train", description="Train a VGG on Fashion-MNIST", extra=None
) -> argparse.Namespace:
    """Parse and check training flags; a preset's values become defaults before the real parse.
    extra(parser) may add flags of its own (common.compare does)."""
    p = train_parser(prog, description)
    if extra:
        extra(p)
    preset = p.parse_known_args(argv)[0].preset
    if preset:
        p.set_defaults(**PRESETS[preset])
    args = p.parse_args(argv)
    args.spec = check_train_args(args)  # the model's spec, made once; TrainConfig carries it
    return args


def draw_main(prog, argv, *, draw) -> None:
    """`python -m vgg_X.weights --draw FILE [training flags]`: the initial weights that `vgg_X.train`
    would draw with these flags (--arch ..., --init, --seed), saved as canonical safetensors for
    --init-from. common.compare --same-init uses it. draw(config, path) builds (vgg_X.model.build)
    and saves."""

    def extra(p):
        p.add_argument("--draw", metavar="FILE", required=True, help="write the drawn weights here")

    from .contract import TrainConfig  # imported here: contract reads the flags' defaults from this module

    with main_guard():
        args = parse_train_args(
            argv,
            prog=f"python -m {prog}",
            extra=extra,
            description="Draw a model's initial weights (--init, --seed) into a canonical safetensors file",
        )
        config = TrainConfig.from_args(args)
        draw(config, args.draw)
        print(
            f"wrote {args.draw}: {config.spec.name} at {config.resize} px, --init {config.init}, --seed {config.seed}"
        )


def check_train_args(args):
    """Combinations argparse cannot see; each failure says what to change. Returns the model's
    spec (model_spec), which the checks make anyway."""
    if args.in_channels != 1 or args.num_classes != 10:
        raise UsageError(
            "Fashion-MNIST has 1 channel and 10 classes: leave --in-channels and --num-classes at 1 and 10"
        )
    if args.devices and args.batch_size % args.devices:
        raise UsageError(
            f"--batch-size {args.batch_size} is the global batch and must split evenly over --devices "
            f"{args.devices}; use a multiple of {args.devices}"
        )
    check_data_dir(args.data_dir)  # before any work, as the loader would later
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: give one or the other")
    if args.optimizer == "adam" and args.momentum:
        raise UsageError("--momentum applies to --optimizer sgd only (Adam has its own betas)")
    try:
        spec = model_spec(args, args.resize)
    except ArchError as e:
        raise UsageError(str(e).replace("image_size", "--resize")) from None
    check_fits(spec, "--resize")
    if args.init_partial and not args.init_from:
        raise UsageError("--init-partial says how to use --init-from FILE; give the file too")
    if args.lr_factor >= 1:
        raise UsageError(
            f"--lr-factor {args.lr_factor} would not lower the learning rate; use a factor below 1 (0.1 is usual)"
        )
    if args.warmup_epochs > args.epochs:
        raise UsageError(f"--warmup-epochs {args.warmup_epochs:g} is longer than the run (--epochs {args.epochs})")
    if args.optimizer == "sgd" and args.lr > 1.0 or args.optimizer == "adam" and args.lr > 0.1:
        print(f"warning: --lr {args.lr} is unusually high for {args.optimizer}; expect divergence", file=sys.stderr)
    return spec
