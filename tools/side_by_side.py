"""`python -m tools.side_by_side [--check] [--root DIR]` (or `make docs`): the three implementations, piece by piece.

Writes docs/side_by_side.md, docs/side_by_side.html and the `vgg_block` snippet in README.md
(between `<!-- side-by-side:vgg_block -->` and `<!-- end side-by-side:vgg_block -->`), all cut
from the code itself; `--check` writes nothing and exits 1 naming each file that differs from
what it would write (CI runs it through tests/test_side_by_side.py).

How a piece is cut: PIECES names, per framework, the functions, classes or `Class.method`s
that make it; their whole source lines (decorators and the comments just above included) are
taken from the file text with `ast`, never by line number and never by importing a framework.
Module-level helpers they use (a `_named`, a `loss_fn`, Flax's `VGGBlock`) come along, each in
the first piece that needs it, unless another piece names it as its own.

The prose ("what differs and why") is hand-written in docs/side_by_side_notes.md, one
`## key` section per piece, and rendered to HTML by markdown-it-py (CommonMark); API_TABLE
below is checked against the libraries by the tests.

Docs tooling, run from a checkout: it is not part of the installed packages, so it may use
markdown-it-py and pygments (pinned in pyproject's `test` extra: the page is compared byte for
byte) while `common` stays free of both.

Why three fenced blocks per piece in the Markdown, rather than an HTML table: GitHub
highlights fenced code but not code inside `<td>`, and squeezes three table columns into
its ~900 px, where 100-character lines would scroll inside each cell. Full-width blocks
read better there; the HTML page is where the three columns stand next to each other.
"""

from __future__ import annotations

import argparse
import ast
import html
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from common.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
MD, HTML, README, NOTES = "docs/side_by_side.md", "docs/side_by_side.html", "README.md", "docs/side_by_side_notes.md"
README_BEGIN, README_END = "<!-- side-by-side:vgg_block -->", "<!-- end side-by-side:vgg_block -->"
FRAMEWORKS = {
    "torch": ("PyTorch", "vgg_torch"),
    "gluon": ("MXNet Gluon", "vgg_gluon"),
    "flax": ("Flax NNX", "vgg_flax"),
}
STYLE = "default"  # Pygments style; its CSS is inlined, so the page needs no other file


class SideBySideError(ValueError):
    """A piece cannot be cut: a name is missing or a file does not parse."""


@dataclass(frozen=True)
class Piece:
    key: str  # the notes' section and the HTML anchor
    title: str
    module: str  # model, train or weights: vgg_X/<module>.py
    names: dict[str, tuple[str, ...]]  # framework -> top-level names or "Class.method"


def _same(*names):
    return {fw: names for fw in FRAMEWORKS}


# The map from each piece to its code. Where a piece has no common name, the table says where
# it lives: initialisation is a function in PyTorch but initialisers bound at construction in
# Gluon and Flax (`_initializers`).
PIECES = (
    Piece("block", "The VGG block", "model", _same("vgg_block")),
    Piece("network", "The network", "model", _same("vgg", "build")),
    Piece(
        "init",
        "Initialisation",
        "model",
        {"torch": ("init_weights",), "gluon": ("_initializers",), "flax": ("_initializers",)},
    ),
    Piece("shapes", "The shape summary", "model", _same("layer_shapes", "summary")),
    Piece("count", "Counting parameters and state", "model", _same("count_parameters")),
    Piece("setup", "Device, random seeds, compilation", "train", _same("Backend.__init__", "Backend.start_epoch")),
    Piece("optimizer", "The optimiser", "train", _same("make_optimizer")),
    Piece("step", "One training step", "train", _same("train_step", "Backend.train_step")),
    Piece("evaluate", "Evaluation", "train", _same("predict", "Backend.predict")),
    Piece("checkpoint", "Checkpoints", "train", _same("save_checkpoint", "load_checkpoint")),
    Piece("weights", "Weight conversion", "weights", _same("to_canonical")),
)

# (concept, torch, gluon, flax): each cell is Python that parses, written with the names that
# the "Imports" row defines (plus net/model, x, loss, optimizer, trainer, p as placeholders);
# tests/test_side_by_side.py resolves every dotted name and checks every keyword argument
# against the installed libraries.
API_TABLE = (
    (
        "Imports (the names below)",
        "import torch; import torch.nn.functional as F; from torch import nn; from safetensors.torch import save_file",
        "import mxnet as mx; import numpy as np; from mxnet import autograd, gluon; from mxnet.gluon import nn",
        "import jax; import jax.numpy as jnp; import numpy as np; import optax; from flax import nnx; "
        "from safetensors.numpy import save_file",
    ),
    (
        "Data layout",
        "x  # (N, C, H, W)",
        "x  # (N, C, H, W), layout='NCHW' is the default",
        "jnp.transpose(x, (0, 2, 3, 1))  # NCHW -> (N, H, W, C)",
    ),
    (
        "Container",
        "nn.Sequential(OrderedDict(conv1=conv, relu1=relu))",
        "net = nn.HybridSequential(); net.register_child(conv, 'conv1')",
        "class Block(nnx.Module): ...  # attributes are the layers, __call__ the order",
    ),
    (
        "Convolution, 3x3 'same'",
        "nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)",
        "nn.Conv2D(out_channels, kernel_size=3, padding=1, in_channels=in_channels)",
        "nnx.Conv(in_channels, out_channels, (3, 3), padding='SAME', rngs=rngs)",
    ),
    (
        "Activation",
        "nn.ReLU(inplace=True); F.relu(x)",
        "nn.Conv2D(out_channels, 3, activation='relu'); nn.Activation('relu')",
        "nnx.relu(x)",
    ),
    (
        "Max-pool 2x2",
        "nn.MaxPool2d(kernel_size=2, stride=2)",
        "nn.MaxPool2D(pool_size=2, strides=2)",
        "nnx.max_pool(x, (2, 2), strides=(2, 2))  # on a CPU, vgg_flax.xla_cpu: reshape + max",
    ),
    (
        "Batch norm",
        "nn.BatchNorm2d(channels)  # momentum=0.1: weight of the new batch",
        "nn.BatchNorm(in_channels=channels)  # momentum=0.9: weight of the old value",
        "nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)  # default momentum 0.99",
    ),
    (
        "Local response norm",
        "nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)",
        "mx.nd.LRN(x, nsize=5, alpha=1e-4, beta=0.75, knorm=2.0)  # F.LRN in a HybridLambda",
        "jax.lax.reduce_window(x * x, 0.0, jax.lax.add, (1, 1, 1, 5), (1, 1, 1, 1), pad)  # none built in",
    ),
    (
        "Flatten",
        "nn.Flatten()  # (C, H, W) order",
        "nn.Dense(units, flatten=True)  # the default: Dense flattens, (C, H, W) order",
        "x.reshape(x.shape[0], -1)  # (H, W, C) order",
    ),
    (
        "Dense",
        "nn.Linear(in_features, out_features)",
        "nn.Dense(units, in_units=in_features)",
        "nnx.Linear(in_features, out_features, rngs=rngs)",
    ),
    ("Dropout", "nn.Dropout(p=0.5)", "nn.Dropout(rate=0.5)", "nnx.Dropout(rate=0.5, rngs=rngs)"),
    (
        "Training / inference mode",
        "net.train(); net.eval()",
        "with autograd.record(): out = net(x)  # training behaviour only inside record()",
        "model.train(); model.eval()",
    ),
    (
        "Xavier-uniform init",
        "nn.init.xavier_uniform_(w)",
        "mx.init.Xavier(rnd_type='uniform', factor_type='avg', magnitude=3)",
        "nnx.initializers.xavier_uniform()",
    ),
    (
        "Kaiming-normal fan-out init",
        "nn.init.kaiming_normal_(w, mode='fan_out', nonlinearity='relu')",
        "mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)",
        "nnx.initializers.variance_scaling(2.0, 'fan_out', 'normal')",
    ),
    (
        "N(0, 0.01), zeros",
        "nn.init.normal_(w, 0.0, 0.01); nn.init.zeros_(b)",
        "mx.init.Normal(0.01); mx.init.Zero()",
        "nnx.initializers.normal(0.01); nnx.initializers.zeros",
    ),
    (
        "Where initialisers go",
        "init_weights(net)  # after construction, in place",
        "nn.Conv2D(out_channels, 3, weight_initializer=init); net.initialize(ctx=ctx)",
        "nnx.Conv(in_channels, out_channels, (3, 3), kernel_init=init, rngs=rngs)",
    ),
    (
        "Parameters allocated",
        "net = nn.Linear(4, 2)  # at construction",
        "net.initialize(ctx=mx.cpu())  # deferred until here",
        "nnx.Linear(4, 2, rngs=nnx.Rngs(0))  # at construction; nnx.eval_shape(lambda: ...) allocates nothing",
    ),
    (
        "Loss",
        "F.cross_entropy(logits, y)  # batch mean",
        "gluon.loss.SoftmaxCrossEntropyLoss()(logits, y)  # per example",
        "optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()",
    ),
    (
        "Gradients",
        "loss.backward()  # into each parameter's .grad",
        "with autograd.record(): loss = loss_fn(net(x), y)\nloss.backward()  # into p.grad()",
        "(loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)  # an nnx.State",
    ),
    (
        "Clearing gradients",
        "optimizer.zero_grad(set_to_none=True)  # they accumulate",
        "p.grad_req  # 'write' (default): overwritten",
        "grads  # return values: nothing to clear",
    ),
    (
        "Optimiser",
        "torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)",
        "gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1, 'momentum': 0.9})",
        "nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)",
    ),
    (
        "Adam",
        "torch.optim.Adam(net.parameters(), lr=1e-3)",
        "gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 1e-3})",
        "optax.adam(1e-3)",
    ),
    (
        "Update",
        "optimizer.step()",
        "trainer.step(batch_size)  # divides the summed gradients",
        "optimizer.update(model, grads)",
    ),
    (
        "Compilation",
        "torch.compile(net)  # optional; eager otherwise",
        "net.hybridize(static_alloc=True, static_shape=True)",
        "nnx.jit(train_step)  # as the decorator @nnx.jit",
    ),
    (
        "Device",
        "device = torch.device('cuda:0'); net.to(device); x.to(device)",
        "ctx = mx.gpu(0); net.initialize(ctx=ctx); mx.nd.array(x, ctx=ctx)",
        "device = jax.devices('gpu')[0]; jax.device_put(x, device)",
    ),
    (
        "Is a GPU visible?",
        "torch.cuda.is_available()",
        "mx.context.num_gpus() > 0",
        "jax.devices('gpu')  # RuntimeError when none",
    ),
    ("Back to NumPy", "x.cpu().numpy(); loss.item()", "x.asnumpy(); loss.asscalar()", "np.asarray(x); float(loss)"),
    (
        "Inference without a tape",
        "with torch.inference_mode(): out = net(x)",
        "out = net(x)  # nothing is recorded outside autograd.record()",
        "out = model(x)  # nothing is differentiated outside nnx.grad",
    ),
    (
        "Shapes without data",
        "with torch.no_grad(): net(torch.zeros(1, 3, 224, 224))  # computes",
        "net(mx.sym.var('data')).infer_shape(data=(1, 3, 224, 224))",
        "jax.eval_shape(f, jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))",
    ),
    (
        "Trainable parameters",
        "sum(p.numel() for p in net.parameters() if p.requires_grad)",
        "sum(np.prod(p.shape) for p in net.collect_params().values() if p.grad_req != 'null')",
        "sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))",
    ),
    (
        "Batch-norm statistics",
        "net.named_buffers()  # running_mean, running_var, num_batches_tracked",
        "p.grad_req == 'null'  # running_mean, running_var: Parameters without gradient",
        "nnx.state(model, nnx.BatchStat)  # mean, var",
    ),
    (
        "Parameter names",
        "net.state_dict()  # 'block1.conv1.weight'",
        "net._collect_params_with_prefix()  # 'block1.conv1.weight'; collect_params(): global prefixes",
        "nnx.to_flat_state(nnx.state(model))  # ('block1', 'conv1', 'kernel')",
    ),
    (
        "Saving weights",
        "save_file(net.state_dict(), path); net.load_state_dict(state)",
        "net.save_parameters(path); net.load_parameters(path, ctx=ctx)",
        "save_file(flat, path)  # flat from nnx.to_pure_dict(nnx.state(model)); back: nnx.update(model, state)",
    ),
    (
        "Optimiser state",
        "torch.save(optimizer.state_dict(), path)",
        "trainer.save_states(path); trainer.load_states(path)",
        "nnx.state(optimizer)",
    ),
    (
        "Seeding",
        "torch.manual_seed(seed)  # one global generator",
        "mx.random.seed(seed, ctx=ctx)  # global, per device",
        "nnx.Rngs(params=seed, dropout=seed); nnx.reseed(model, dropout=seed)  # streams, no global state",
    ),
    (
        "RNG state",
        "torch.get_rng_state(); torch.set_rng_state(state)",
        "mx.random.seed(seed)  # cannot be read back: reseed",
        "nnx.state(model, nnx.RngState)  # keys and counts, saved with the model",
    ),
)


# --- cutting the code ------------------------------------------------------------------------


def _parse(path: str, text: str) -> ast.Module:
    try:
        return ast.parse(text, filename=path)
    except SyntaxError as e:
        raise SideBySideError(f"cannot parse {path} (line {e.lineno}: {e.msg}); fix it, then regenerate") from None


def _defined(node) -> list[str]:
    """The names a module-level statement defines (functions, classes, plain assignments)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _used(node) -> set[str]:
    """Names a definition reads at run time (annotations left out: they name types, not helpers)."""
    out = set()

    def walk(n):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            out.add(n.id)
        for field, value in ast.iter_fields(n):
            if field in ("annotation", "returns"):
                continue
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    walk(child)

    walk(node)
    return out


def _first_line(node, lines: list[str]) -> int:
    """1-based first line of a definition: its decorators and the comment lines right above."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    while start > 1 and lines[start - 2].strip().startswith("#"):
        start -= 1
    return start


@dataclass
class Cut:
    code: str
    names: list[str]  # what was cut, in source order (helpers included)


class Source:
    """One file's text, parsed, with the names already shown on the page."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()
        self.top = {name: node for node in _parse(path, text).body for name in _defined(node)}
        self.shown: set[str] = set()

    def node(self, dotted: str, piece: Piece):
        cls_name, _, method = dotted.rpartition(".")
        node = self.top.get(cls_name or method)
        if node is not None and cls_name:
            found = [
                n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == method
            ]
            node = found[0] if isinstance(node, ast.ClassDef) and found else None
        if node is None:
            raise SideBySideError(
                f"{self.path} has no `{dotted}` (piece '{piece.title}'); "
                "rename it in PIECES in tools/side_by_side.py, then regenerate"
            )
        return node

    def cut(self, piece: Piece, names: tuple[str, ...], claimed: set[str]) -> Cut:
        wanted = {d: self.node(d, piece) for d in names}
        todo = list(wanted.values())
        while todo:  # module-level helpers, transitively, each shown once on the page
            for name in sorted(_used(todo.pop()) & (self.top.keys() - claimed - self.shown - wanted.keys())):
                wanted[name] = self.top[name]
                todo.append(self.top[name])
        self.shown |= wanted.keys()
        order = sorted(wanted.items(), key=lambda kv: kv[1].lineno)
        chunks, open_class = [], None
        for dotted, node in order:
            cls = dotted.rpartition(".")[0] or None
            text = "\n".join(self.lines[_first_line(node, self.lines) - 1 : node.end_lineno])
            if cls and cls != open_class:  # a method is shown under its class's first line
                text = self.lines[self.top[cls].lineno - 1] + "\n" + text
            chunks.append(text)
            open_class = cls
        return Cut("\n\n".join(chunks) + "\n", [d for d, _ in order])


def read_sources(root: Path) -> dict[str, str]:
    """The text of every file PIECES cuts from, plus the notes, the README and the pins."""
    paths = {f"{pkg}/{p.module}.py" for _, pkg in FRAMEWORKS.values() for p in PIECES} | {
        NOTES,
        README,
        "pyproject.toml",
        "Makefile",
    }
    out = {}
    for rel in sorted(paths):
        try:
            out[rel] = (root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SideBySideError(f"{root / rel} is missing; run from the project root or pass --root") from None
    return out


def cut_pieces(sources: dict[str, str]) -> list[tuple[Piece, dict[str, tuple[str, Cut]]]]:
    """[(piece, {framework: (path, cut)})] in page order."""
    files: dict[str, Source] = {}
    claimed = {}  # path -> names that are some piece's own
    for p in PIECES:
        for fw, names in p.names.items():
            path = f"{FRAMEWORKS[fw][1]}/{p.module}.py"
            claimed.setdefault(path, set()).update(n.split(".")[0] for n in names)
    out = []
    for p in PIECES:
        row = {}
        for fw, names in p.names.items():
            path = f"{FRAMEWORKS[fw][1]}/{p.module}.py"
            src = files.setdefault(path, Source(path, sources[path]))
            row[fw] = (path, src.cut(p, names, claimed[path]))
        out.append((p, row))
    return out


# --- prose -----------------------------------------------------------------------------------


def read_notes(text: str) -> dict[str, str]:
    """`## key` sections of docs/side_by_side_notes.md; text before the first is a comment for editors."""
    sections, key = {}, None
    for line in text.splitlines():
        m = re.fullmatch(r"## (\w+)\s*", line)
        if m:
            key = m.group(1)
            sections[key] = []
        elif key:
            sections[key].append(line)
    notes = {k: "\n".join(v).strip() for k, v in sections.items()}
    missing = [k for k in ["intro", *(p.key for p in PIECES), "api"] if not notes.get(k)]
    if missing:
        raise SideBySideError(f"{NOTES} has no section for {', '.join(missing)}; add `## {missing[0]}` with its prose")
    return notes


_MARKDOWN = MarkdownIt("commonmark", {"html": False})  # the notes are Markdown only: raw HTML is shown as text


def markdown_to_html(text: str) -> str:
    """CommonMark, rendered by markdown-it-py."""
    return _MARKDOWN.render(text).rstrip("\n")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def pinned_versions(pins_text: str) -> str:
    """The framework pins from pyproject.toml and the Makefile (which installs MXNet on its own):
    they change only when the pins do."""
    pins = dict(re.findall(r"\b(torch|mxnet|flax|jax)==([\w.]+)", pins_text))
    return (
        f"PyTorch {pins.get('torch', '?')}, MXNet {pins.get('mxnet', '?')}, Flax {pins.get('flax', '?')} "
        f"(JAX {pins.get('jax', '?')})"
    )


# --- the Markdown ----------------------------------------------------------------------------


def _caption(fw: str, path: str, cut: Cut) -> str:
    return f"{FRAMEWORKS[fw][0]} · `{path}` · " + ", ".join(f"`{n}`" for n in cut.names)


def _fenced(code: str) -> str:
    return f"```python\n{code}```"


def render_markdown(pieces, notes: dict[str, str], versions: str) -> str:
    titles = [f"{i}. {p.title}" for i, (p, _) in enumerate(pieces, 1)]
    out = [
        "<!-- Generated by `python -m tools.side_by_side` from the code and docs/side_by_side_notes.md: "
        "edit those, then regenerate. -->",
        "# VGG three ways, side by side",
        "",
        notes["intro"],
        "",
        "The same page in three columns with syntax highlighting: [side_by_side.html](side_by_side.html) "
        "(GitHub shows it as source; open it from a clone). Pinned versions: " + versions + ".",
        "",
        *(f"{i}. [{p.title}](#{github_slug(t)})" for i, ((p, _), t) in enumerate(zip(pieces, titles), 1)),
        f"{len(pieces) + 1}. [API correspondences](#{github_slug(f'{len(pieces) + 1}. API correspondences')})",
        "",
    ]
    for (p, row), title in zip(pieces, titles):
        out += [f"## {title}", "", notes[p.key], ""]
        for fw, (path, cut) in row.items():
            out += [f"### {_caption(fw, path, cut)}", "", _fenced(cut.code), ""]
    out += [
        f"## {len(pieces) + 1}. API correspondences",
        "",
        notes["api"],
        "",
        "| | " + " | ".join(name for name, _ in FRAMEWORKS.values()) + " |",
        "|---|---|---|---|",
    ]
    for concept, *cells in API_TABLE:
        code = [" ".join(f"`{line}`" for line in c.replace("|", "\\|").splitlines()) for c in cells]
        out.append(f"| {concept} | " + " | ".join(code) + " |")
    return "\n".join(out) + "\n"


def render_readme_snippet(pieces) -> str:
    p, row = pieces[0]
    assert p.key == "block"
    out = []
    for fw, (path, cut) in row.items():
        out += [f"**{FRAMEWORKS[fw][0]}** (`{path}`)", "", _fenced(cut.code), ""]
    return "\n".join(out)


def splice_readme(readme: str, snippet: str) -> str:
    if readme.count(README_BEGIN) != 1 or readme.count(README_END) != 1:
        raise SideBySideError(
            f"{README} needs exactly one {README_BEGIN} ... {README_END} pair "
            "(in its '## Side by side' section) for the generated vgg_block"
        )
    head, rest = readme.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return f"{head}{README_BEGIN}\n{snippet}{README_END}{tail}"


# --- the HTML page ---------------------------------------------------------------------------

CSS = """
body { margin: 0 14px 40px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; }
h1 { font-size: 1.6em; margin: 18px 0 6px; }
h2 { font-size: 1.25em; margin: 30px 0 4px; padding-top: 8px; border-top: 1px solid #d0d7de; }
p, ul { max-width: 118ch; margin: 6px 0; }
li { margin: 2px 0; }
code { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; background: #f3f4f6;
       padding: 0 3px; border-radius: 3px; }
a { color: #0969da; }
.toc { columns: 3; max-width: 118ch; padding-left: 22px; }
.cols { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 8px; margin-top: 10px; }
.col { min-width: 0; border: 1px solid #d0d7de; border-radius: 5px; overflow: hidden; }
.cap { padding: 4px 8px; background: #eef1f4; border-bottom: 1px solid #d0d7de; font-size: 12px;
       overflow-wrap: anywhere; }
.cap b { font-size: 13px; }
.cap code { background: none; padding: 0; font-size: 11.5px; }
.highlight { margin: 0; }
.highlight pre { margin: 0; padding: 6px 8px; font: 11.5px/1.38 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas,
                 monospace; white-space: pre-wrap; overflow-wrap: anywhere; }
/* one block per source line; a wrapped line continues four columns right of its own indent */
.highlight .ln { display: block; min-height: 1.38em; text-indent: -4ch; }
.highlight .ws { position: absolute; opacity: 0; pointer-events: none; }
table.api { border-collapse: collapse; width: 100%; table-layout: fixed; font-size: 12.5px; }
table.api th, table.api td { border: 1px solid #d0d7de; padding: 4px 6px; vertical-align: top; text-align: left; }
table.api th { background: #eef1f4; }
table.api th:first-child { width: 13%; }
table.api td code.highlight { display: block; white-space: pre-wrap; overflow-wrap: anywhere; background: none;
                              padding: 0; font-size: 11.5px; }
"""


def _highlight_lines(code: str) -> str:
    """Pygments HTML, one <span class="ln"> per source line. The indent becomes padding, capped at
    40% of the column (a call aligned 60 columns deep would otherwise leave no room for its text),
    and a wrapped line continues 4 columns right of its own indent. The indent's spaces stay in an
    invisible span, so that copied code keeps them."""
    body = highlight(code, PythonLexer(), HtmlFormatter(nowrap=True))
    out = []
    for src, line in zip(code.splitlines(), body.rstrip("\n").split("\n")):
        n = len(src) - len(src.lstrip(" "))
        ws = f'<span class="ws">{" " * n}</span>' if n else ""
        out.append(f'<span class="ln" style="padding-left:min({n + 4}ch,40%)">{ws}{_drop_spaces(line, n)}\n</span>')
    return "".join(out)


def _drop_spaces(line: str, n: int) -> str:
    """The highlighted line less its first n spaces, which may sit inside a token's span (a docstring's)."""
    i = 0
    while n:
        if line[i] == "<":
            i = line.index(">", i) + 1
        else:
            assert line[i] == " ", line
            line, n = line[:i] + line[i + 1 :], n - 1
    return line


def _highlight_inline(code: str) -> str:
    return f'<code class="highlight">{highlight(code, PythonLexer(), HtmlFormatter(nowrap=True)).rstrip()}</code>'


def render_html(pieces, notes: dict[str, str], versions: str) -> str:
    style = HtmlFormatter(style=STYLE).get_style_defs(".highlight")
    n = len(pieces)
    toc = "".join(f'<li><a href="#{p.key}">{html.escape(p.title)}</a></li>' for p, _ in pieces)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<!-- Generated by `python -m tools.side_by_side`: edit the code or docs/side_by_side_notes.md, "
        "then regenerate. -->",
        "<title>VGG three ways, side by side</title>",
        f"<style>{CSS}{style}\n</style></head><body>",
        "<h1>VGG three ways, side by side</h1>",
        markdown_to_html(notes["intro"]),
        f"<p>Pinned versions: {html.escape(versions)}.</p>",
        f'<ol class="toc">{toc}<li><a href="#api">API correspondences</a></li></ol>',
    ]
    for i, (p, row) in enumerate(pieces, 1):
        out += [
            f'<section id="{p.key}"><h2>{i}. {html.escape(p.title)}</h2>',
            markdown_to_html(notes[p.key]),
            '<div class="cols">',
        ]
        for fw, (path, cut) in row.items():
            names = ", ".join(f"<code>{html.escape(x)}</code>" for x in cut.names)
            out.append(
                f'<div class="col"><div class="cap"><b>{FRAMEWORKS[fw][0]}</b> · <code>{path}</code> · '
                f'{names}</div><div class="highlight"><pre>{_highlight_lines(cut.code)}</pre></div></div>'
            )
        out += ["</div></section>"]
    out += [
        f'<section id="api"><h2>{n + 1}. API correspondences</h2>',
        markdown_to_html(notes["api"]),
        '<table class="api"><thead><tr><th></th>'
        + "".join(f"<th>{name}</th>" for name, _ in FRAMEWORKS.values())
        + "</tr></thead><tbody>",
    ]
    for concept, *cells in API_TABLE:
        out.append(
            f"<tr><th>{html.escape(concept)}</th>"
            + "".join(f"<td>{_highlight_inline(c)}</td>" for c in cells)
            + "</tr>"
        )
    out += ["</tbody></table></section>", "</body></html>"]
    return "\n".join(out) + "\n"


# --- the command -----------------------------------------------------------------------------


def generate(sources: dict[str, str]) -> dict[str, str]:
    """{relative path: the text it should hold}, from the sources' text alone."""
    pieces = cut_pieces(sources)
    notes = read_notes(sources[NOTES])
    versions = pinned_versions(sources["pyproject.toml"] + sources["Makefile"])
    return {
        MD: render_markdown(pieces, notes, versions),
        HTML: render_html(pieces, notes, versions),
        README: splice_readme(sources[README], render_readme_snippet(pieces)),
    }


def stale(root: Path, outputs: dict[str, str]) -> list[str]:
    """The files under `root` whose text differs from `outputs`."""
    out = []
    for rel, text in outputs.items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(rel)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m tools.side_by_side",
        description="Write docs/side_by_side.{md,html} and README's vgg_block snippet from the three implementations.",
    )
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file is stale")
    ap.add_argument("--root", type=Path, default=ROOT, help="project root (default: this checkout)")
    args = ap.parse_args(argv)
    try:
        outputs = generate(read_sources(args.root))
    except SideBySideError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    old = stale(args.root, outputs)
    if args.check:
        if old:
            print(
                f"error: {', '.join(old)} {'is' if len(old) == 1 else 'are'} out of date with the code: "
                "run `python -m tools.side_by_side` (or `make docs`) and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"up to date: {', '.join(outputs)}")
        return 0
    for rel in old:
        (args.root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(args.root / rel, outputs[rel])
    print(f"wrote {', '.join(old)}" if old else f"up to date: {', '.join(outputs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
