"""VGG architecture tables and the arithmetic of shapes and parameter counts.

Framework-free on purpose: this is the oracle the three implementations are
tested against, so it must not share code with any of them.

Reference: Simonyan & Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition" (arXiv:1409.1556), Table 1 (configurations)
and Table 2 (parameter counts, in millions).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from .errors import ArchError  # noqa: F401  (import it from common.errors)


@dataclass(frozen=True)
class Block:
    """One VGG block: convolutions of `out_channels` each, then a 2x2 max-pool."""

    out_channels: int
    kernel_sizes: tuple[int, ...]  # one per convolution; 3 everywhere but config C

    @property
    def num_convs(self) -> int:
        return len(self.kernel_sizes)


def _blocks(*rows):
    return tuple(Block(c, tuple(ks)) for c, ks in rows)


# Table 1 of the paper, by letter. C is D with the last conv of blocks 3-5
# replaced by a 1x1 convolution.
TABLE1 = {
    "A": _blocks((64, [3]), (128, [3]), (256, [3, 3]), (512, [3, 3]), (512, [3, 3])),
    "B": _blocks((64, [3, 3]), (128, [3, 3]), (256, [3, 3]), (512, [3, 3]), (512, [3, 3])),
    "C": _blocks((64, [3, 3]), (128, [3, 3]), (256, [3, 3, 1]), (512, [3, 3, 1]), (512, [3, 3, 1])),
    "D": _blocks((64, [3, 3]), (128, [3, 3]), (256, [3, 3, 3]), (512, [3, 3, 3]), (512, [3, 3, 3])),
    "E": _blocks((64, [3, 3]), (128, [3, 3]), (256, [3] * 4), (512, [3] * 4), (512, [3] * 4)),
}

# Every name the builders accept: letter -> (table row, batch norm, LRN).
# The `_bn` variants are the ones torchvision and the Gluon model zoo ship.
CONFIGS = {
    "vgg11": ("A", False, False),
    "vgg11_lrn": ("A", False, True),
    "vgg13": ("B", False, False),
    "vgg16_c": ("C", False, False),
    "vgg16": ("D", False, False),
    "vgg19": ("E", False, False),
    "vgg11_bn": ("A", True, False),
    "vgg13_bn": ("B", True, False),
    "vgg16_bn": ("D", True, False),
    "vgg19_bn": ("E", True, False),
}
ALIASES = {"A": "vgg11", "A-LRN": "vgg11_lrn", "B": "vgg13", "C": "vgg16_c", "D": "vgg16", "E": "vgg19"}

# VGG-11 in d2l's `conv_arch` form: (num_convs, out_channels) per block.
D2L_CONV_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))

# The local response normalisation of A-LRN (AlexNet's constants). The sum over
# the channel window is scaled by alpha / size, as torch, MXNet and the Flax
# implementation here all do.
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)

# The initialisations every framework offers (--init): xavier (Xavier-uniform weights, zero
# biases: the gluonbook), d2l (Xavier-uniform weights, biases uniform within +-1/sqrt(fan_in):
# d2l's PyTorch code), kaiming (torchvision's). vgg_X.model says how each framework draws them.
INITS = ("xavier", "d2l", "kaiming")

HIDDEN_UNITS = 4096


@dataclass(frozen=True)
class VGGSpec:
    """Everything a builder needs; the same object drives all three frameworks."""

    name: str
    blocks: tuple[Block, ...]
    in_channels: int = 1
    num_classes: int = 10
    image_size: tuple[int, int] = (224, 224)
    hidden_units: int = HIDDEN_UNITS
    dropout: float = 0.5
    batch_norm: bool = False
    lrn: bool = False  # LRN after the first convolution (config A-LRN)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) after the last block: what the first dense layer flattens."""
        h, w = self.image_size
        n = len(self.blocks)
        return (self.blocks[-1].out_channels, h >> n, w >> n)

    @property
    def flat_features(self) -> int:
        return prod(self.feature_shape)


def valid_names() -> list[str]:
    return list(CONFIGS) + list(ALIASES)


def _parse_tuples(arch) -> tuple[Block, ...]:
    form = (
        "a sequence of (num_convs, out_channels) pairs of positive ints, "
        "e.g. ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))"
    )
    try:
        rows = [tuple(row) for row in arch]
    except TypeError:
        raise ArchError(f"architecture {arch!r} is neither a known name nor {form}") from None
    if not rows:
        raise ArchError(f"architecture is empty; expected {form}")
    blocks = []
    for i, row in enumerate(rows, 1):
        ok = len(row) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in row)
        if not ok:
            raise ArchError(f"block {i} of the architecture is {row!r}; expected {form}")
        blocks.append(Block(row[1], (3,) * row[0]))
    return tuple(blocks)


def parse_arch(text: str):
    """Parse a command-line --arch: a name, or d2l's `conv_arch` tuples as text."""
    text = text.strip()
    if text[:1] in "([":
        import ast

        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ArchError(
                f"--arch {text!r} is not a valid tuple literal; write e.g. '((1,64),(1,128),(2,256),(2,512),(2,512))'"
            ) from None
    return text


def make_spec(
    arch="vgg11",
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int | tuple[int, int] = 224,
    width_ratio: int = 1,
    scale_classifier: bool = False,
    dropout: float = 0.5,
    batch_norm: bool | None = None,
) -> VGGSpec:
    """Resolve a name ('vgg11', 'D', 'vgg16_bn', ...) or d2l's `conv_arch` tuples into a spec.

    width_ratio divides every block's channels (d2l's `ratio = 4`);
    scale_classifier divides the 4096 hidden units by the same ratio (as d2lzh_pytorch's
    `ratio = 8` does).
    batch_norm overrides the table's choice (None keeps it).
    """
    if isinstance(arch, VGGSpec):
        return arch
    lrn = False
    if isinstance(arch, str):
        key = ALIASES.get(arch, ALIASES.get(arch.upper(), arch.lower()))
        if key not in CONFIGS:
            raise ArchError(
                f"unknown architecture {arch!r}; valid names: {', '.join(valid_names())}, "
                "or (num_convs, out_channels) tuples"
            )
        letter, bn, lrn = CONFIGS[key]
        name, blocks = key, TABLE1[letter]
    else:
        name, bn, blocks = "custom", False, _parse_tuples(arch)
    if batch_norm is not None:
        bn = batch_norm
    if bn and lrn:
        raise ArchError("vgg11_lrn with batch norm is not a configuration of the paper or torchvision; pick one")

    for label, v in (("in_channels", in_channels), ("num_classes", num_classes), ("width_ratio", width_ratio)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ArchError(f"{label} must be a positive int, got {v!r}")
    if not 0.0 <= dropout < 1.0:
        raise ArchError(f"dropout must lie in [0, 1), got {dropout!r}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ArchError(f"image_size must be a positive int or an (height, width) pair, got {image_size!r}")
    smallest = 2 ** len(blocks)
    if min(size) < smallest:
        raise ArchError(
            f"input {size[0]}x{size[1]} is too small: {len(blocks)} 2x2 max-pools shrink it to nothing; "
            f"the smallest size that works is {smallest} "
            f"(resize Fashion-MNIST's 28x28, e.g. --resize {max(smallest, 32)})"
        )

    scaled = []
    for i, b in enumerate(blocks, 1):
        c = b.out_channels // width_ratio
        if c < 1:
            raise ArchError(
                f"width_ratio {width_ratio} leaves block {i} ({b.out_channels} channels) with 0 channels; "
                f"the largest ratio that works is {min(x.out_channels for x in blocks)}"
            )
        scaled.append(Block(c, b.kernel_sizes))
    hidden = HIDDEN_UNITS // width_ratio if scale_classifier else HIDDEN_UNITS
    if width_ratio != 1:
        name = f"{name}/{width_ratio}"
    return VGGSpec(
        name=name,
        blocks=tuple(scaled),
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=size,
        hidden_units=hidden,
        dropout=dropout,
        batch_norm=bn,
        lrn=lrn,
    )


# --- arithmetic: the independent oracle ------------------------------------


def expected_shapes(spec: VGGSpec, batch: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """NCHW output shape after each block, then after flatten and each dense layer."""
    c, (h, w) = spec.in_channels, spec.image_size
    out = []
    for i, b in enumerate(spec.blocks, 1):
        c, h, w = b.out_channels, h // 2, w // 2  # 'same' convs keep H, W; the pool halves them
        out.append((f"block{i}", (batch, c, h, w)))
    out.append(("flatten", (batch, c * h * w)))
    out += [
        ("fc1", (batch, spec.hidden_units)),
        ("fc2", (batch, spec.hidden_units)),
        ("fc3", (batch, spec.num_classes)),
    ]
    return out


def expected_counts(spec: VGGSpec) -> tuple[int, int]:
    """(trainable parameters, buffer values). Buffers are batch-norm running mean and variance."""
    params = buffers = 0
    cin = spec.in_channels
    for b in spec.blocks:
        for k in b.kernel_sizes:
            params += k * k * cin * b.out_channels + b.out_channels
            if spec.batch_norm:
                params += 2 * b.out_channels  # scale and shift
                buffers += 2 * b.out_channels  # running mean and variance
            cin = b.out_channels
    h = spec.hidden_units
    params += spec.flat_features * h + h + h * h + h + h * spec.num_classes + spec.num_classes
    return params, buffers


def flops_per_example(spec: VGGSpec) -> int:
    """Multiply-adds x 2 of one forward pass (convolutions and dense layers only)."""
    total, cin = 0, spec.in_channels
    h, w = spec.image_size
    for b in spec.blocks:
        for k in b.kernel_sizes:
            total += 2 * k * k * cin * b.out_channels * h * w
            cin = b.out_channels
        h, w = h // 2, w // 2
    hid = spec.hidden_units
    return total + 2 * (spec.flat_features * hid + hid * hid + hid * spec.num_classes)


def format_summary(rows, title: str | None = None) -> str:
    """d2l's per-block shape printout (`vgg_block_1 output shape: ...`): one line per block and dense layer."""
    lines = [title] if title else []
    for name, shape in rows:
        label = f"vgg_block_{name[5:]}" if name.startswith("block") else name
        lines.append(f"{label} output shape: {tuple(shape)}")
    return "\n".join(lines)
