"""One framework's per-layer profile at one image size, in a process of its own:
`python -m benchmarks.profile_worker CONFIG.json RESULT.json PACKAGE` (common.profile starts it).

The whole training step is the train script's own: the runner classes of benchmarks/workers.py
build `vgg_X.train.Backend` and time its module-level `train_step` on a batch already on the
device, as the throughput benchmark does. Then each layer of that same model (its weights, its
training mode, its precision) is run alone, forward and backward, in the framework's own idiom:

  PyTorch  the module's forward with autograd recording, then `out.backward(g)`
  Gluon    the hybridized child block under `autograd.record()`, then `out.backward(g)`, each
           timed to `mx.nd.waitall()`
  Flax     per layer, a jitted `jax.vjp` (forward, keeping what the backward needs) and a jitted
           call of the vjp function it returns (backward), each timed to `block_until_ready`

Each layer gets the input it has in the model (one forward pass layer by layer first) and an
upstream gradient of its output's shape. The first convolution computes no input gradient, as in
training. A row is a convolution with its batch norm and ReLU, a pooling (with the LRN of vgg11_lrn
before it), or a dense layer with its ReLU and dropout (fc1 with the flatten before it): the row
names of `common.profile.layer_costs`.

Why here and not in vgg_X/: the three idioms sit side by side in one file, the step is timed by
the throughput benchmark's runners (not copied), and the model and train files stay short.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

# The framework's package first, as `python -m vgg_X.train` loads it (benchmarks/workers.py does the same).
if __name__ == "__main__" and len(sys.argv) > 3:
    importlib.import_module(sys.argv[3])

import numpy as np  # noqa: E402

from common.training import keep_freed_memory  # noqa: E402

from .workers import Flax, Gluon, Torch, Unsupported, _rss_mb, timed  # noqa: E402


def row_of(block: str | None, child: str) -> str:
    """The profile row a child module belongs to: `block1.conv1` (with bn1, relu1), `block1.pool`
    (with lrn), `fc1` (with flatten, relu1, dropout1)."""
    kind, digits = child.rstrip("0123456789"), child[len(child.rstrip("0123456789")) :]
    if block:
        return f"{block}.{'pool' if kind in ('pool', 'lrn') else 'conv' + digits}"
    return "fc1" if child == "flatten" else f"fc{digits}"


def _grouped(pairs):
    """[(row, callable)] -> [(row, [callables])], in order."""
    rows = {}
    for row, m in pairs:
        rows.setdefault(row, []).append(m)
    return list(rows.items())


def _best(samples):
    return {"best_s": min(samples), "samples_s": samples}


# ---------------------------------------------------------------------------- PyTorch


def torch_layers(r, x, repeat, clock):
    torch = r.torch
    net = r.b.net
    sync = torch.cuda.synchronize if r.b.dev.type == "cuda" else (lambda: None)
    pairs = []
    for name, child in net.named_children():
        if name.startswith("block"):
            pairs += [(row_of(name, c), m) for c, m in child.named_children()]
        else:
            pairs.append((row_of(None, name), child))
    rows = [(name, torch.nn.Sequential(*mods)) for name, mods in _grouped(pairs)]
    with torch.no_grad(), r.autocast():  # each row's input, as the model computes it
        inputs = [x]
        for _, row in rows[:-1]:
            inputs.append(row(inputs[-1]))
    out = []
    for k, ((name, row), inp) in enumerate(zip(rows, inputs)):
        inp = inp.detach().requires_grad_(k > 0)  # the first layer's input needs no gradient
        params, fwd, bwd, grad = list(row.parameters()), [], [], None
        for i in range(repeat + 1):  # the first is a warm-up
            for p in params + [inp]:
                p.grad = None
            sync()
            t0 = clock()
            with r.autocast():
                y = row(inp)
            sync()
            t1 = clock()
            grad = torch.randn_like(y) if grad is None else grad
            y.backward(grad)
            sync()
            t2 = clock()
            if i:
                fwd.append(t1 - t0), bwd.append(t2 - t1)
        out.append({"layer": name, "output_shape": list(y.shape), "forward": _best(fwd), "backward": _best(bwd)})
    return out


# ---------------------------------------------------------------------------- MXNet Gluon


def gluon_layers(r, xs, repeat, clock):
    mx = r.mx
    from mxnet import autograd

    net = r.b.net
    pairs = []
    for name, child in net._children.items():
        if name.startswith("block"):
            pairs += [(row_of(name, c), m) for c, m in child._children.items()]
        else:
            pairs.append((row_of(None, name), child))
    rows = _grouped(pairs)

    def run(mods, x):
        for m in mods:
            x = m(x)
        return x

    inputs = [xs[0]]  # one device: one part
    for _, mods in rows[:-1]:
        inputs.append(run(mods, inputs[-1]))
    mx.nd.waitall()
    out = []
    for k, ((name, mods), inp) in enumerate(zip(rows, inputs)):
        inp = inp.copy()
        if k:  # the first layer's input needs no gradient
            inp.attach_grad()
        fwd, bwd, grad = [], [], None
        for i in range(repeat + 1):
            mx.nd.waitall()
            t0 = clock()
            with autograd.record():  # training mode: dropout on
                y = run(mods, inp)
            mx.nd.waitall()
            t1 = clock()
            if grad is None:
                grad = mx.nd.random.normal(shape=y.shape, ctx=y.context).astype(y.dtype)  # no bfloat16 sampler
            y.backward(grad)
            mx.nd.waitall()
            t2 = clock()
            if i:
                fwd.append(t1 - t0), bwd.append(t2 - t1)
        out.append({"layer": name, "output_shape": list(y.shape), "forward": _best(fwd), "backward": _best(bwd)})
    return out


# ---------------------------------------------------------------------------- Flax NNX


def _identity(x):
    return x


def flax_rows(model):
    """[(row name, parameter paths it owns, fn(model, x))], from the model's `layers()` and its
    blocks' `conv{j}` / `bn{j}` attributes (the parameter naming scheme). The pooling row runs the
    block's own code with its convolutions (and batch norms) set to the identity, so it times
    whatever pooling the block does (and the LRN of vgg11_lrn)."""
    from flax import nnx

    rows = []
    for name, layer in model.layers():
        if name.startswith("block"):
            convs = []
            while hasattr(layer, f"conv{len(convs) + 1}"):
                convs.append(len(convs) + 1)
            for j in convs:

                def conv(m, x, b=name, j=j):
                    blk = getattr(m, b)
                    x = getattr(blk, f"conv{j}")(x)
                    bn = getattr(blk, f"bn{j}", None)
                    return nnx.relu(x if bn is None else bn(x))

                rows.append((f"{name}.conv{j}", {(name, f"conv{j}"), (name, f"bn{j}")}, conv))

            def pool(m, x, b=name, convs=convs):
                blk = getattr(m, b)
                for j in convs:
                    setattr(blk, f"conv{j}", _identity)
                    if hasattr(blk, f"bn{j}"):
                        setattr(blk, f"bn{j}", _identity)
                return blk(x)

            rows.append((f"{name}.pool", set(), pool))
        elif name != "flatten":

            def dense(m, x, n=name):
                layers = dict(m.layers())
                flatten = layers.get("flatten", lambda v: v.reshape(v.shape[0], -1))
                return layers[n](flatten(x) if n == "fc1" else x)

            rows.append((name, {(name,)}, dense))
    return rows


def flax_layers(r, x_nchw, repeat, clock):
    import jax
    from flax import nnx

    from vgg_flax.model import to_nhwc

    model = r.b.model
    x = to_nhwc(x_nchw)  # NHWC inside, as vgg_flax.train_step
    out = []
    key = jax.random.key(0)
    for k, (name, owned, fn) in enumerate(flax_rows(model)):

        def mine(path, _, owned=owned):
            keys = tuple(str(p) for p in path)
            return any(keys[: len(o)] == o for o in owned)

        graphdef, own, rest = nnx.split(model, nnx.All(nnx.Param, mine), ...)

        def apply(own, rest, x, graphdef=graphdef, fn=fn):
            # rest's Variables copied at this trace level: the dropout's RNG counter may only be
            # mutated at the level where it was made, and jax.vjp traces inside the jit
            return fn(nnx.merge(graphdef, own, jax.tree.map(lambda v: v, rest)), x)

        if k:

            @jax.jit
            def forward(own, rest, x, apply=apply):
                return jax.vjp(lambda o, x: apply(o, rest, x), own, x)
        else:  # the first layer's input needs no gradient

            @jax.jit
            def forward(own, rest, x, apply=apply):
                return jax.vjp(lambda o: apply(o, rest, x), own)

        backward = jax.jit(lambda vjp_fn, g: vjp_fn(g))

        fwd, bwd, grad = [], [], None
        for i in range(repeat + 1):  # the first compiles
            t0 = clock()
            y, vjp_fn = jax.block_until_ready(forward(own, rest, x))
            t1 = clock()
            if grad is None:
                key, sub = jax.random.split(key)
                grad = jax.random.normal(sub, y.shape, y.dtype)
            jax.block_until_ready(backward(vjp_fn, grad))
            t2 = clock()
            if i:
                fwd.append(t1 - t0), bwd.append(t2 - t1)
        shape = list(y.shape)
        out.append(
            {
                "layer": name,
                "output_shape": shape[:1] + shape[-1:] + shape[1:-1] if len(shape) == 4 else shape,
                "forward": _best(fwd),
                "backward": _best(bwd),
            }
        )
        x = y
    return out


# wall: elapsed time. cpu: the process's CPU time, all its threads together: on a shared machine
# it leaves out the time the process waited for a core (it is the wall time of a one-thread run on
# an idle machine; with several threads it adds them up, spinning included).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
RUNNERS = {"vgg_torch": (Torch, torch_layers), "vgg_gluon": (Gluon, gluon_layers), "vgg_flax": (Flax, flax_layers)}


def measure(cfg: dict) -> dict:
    size, batch, repeat = cfg["size"], cfg["batch_size"], cfg["repeat"]
    cls, layers = RUNNERS[cfg["framework"]]
    t = time.perf_counter()
    r = cls(cfg, size)
    build_s, rss_built = time.perf_counter() - t, _rss_mb()
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, size, size), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    xd, yd = r.to_device(x, y)
    r.mode(True)
    # the train script's step, timed as benchmarks.throughput does (each step launched before the
    # previous one is waited for, as in training): `repeat` rounds of two steps, the best round kept
    step = lambda: r.train_step(xd, yd)  # noqa: E731
    warm = timed(step, r.wait, warmup=cfg["warmup"], steps=1, seconds=0)
    per_step = []
    for _ in range(repeat):
        c = time.process_time()
        t = timed(step, r.wait, warmup=0, steps=2, seconds=0)
        per_step.append((t["seconds"] if cfg["clock"] == "wall" else time.process_time() - c) / t["steps"])
    rss_step, device = _rss_mb(), r.memory()
    t = time.perf_counter()
    rows = layers(r, xd, repeat, CLOCKS[cfg["clock"]])
    return {
        "framework": cfg["framework"],
        "size": size,
        "status": "ok",
        "parameters": r.parameters,
        "versions": r.versions,
        "threads": r.threads,
        "build_s": build_s,
        "clock": cfg["clock"],
        "step": {
            "best_s": min(per_step),
            "samples_s": per_step,
            "first_step_s": warm["first_step_s"],
            "warmup_s": warm["warmup_s"],
        },
        "layers_s": time.perf_counter() - t,
        "layers": rows,
        "memory": {
            "rss_after_build_mb": rss_built,
            "peak_rss_after_step_mb": rss_step,
            "peak_rss_mb": _rss_mb(),
            **device,
        },
    }


def main(argv=None):
    cfg_path, result_path = (argv or sys.argv[1:])[:2]
    cfg = json.loads(Path(cfg_path).read_text())
    keep_freed_memory()  # as the train scripts and the throughput workers do
    try:
        result = measure(cfg)
    except Unsupported as e:
        result = {"framework": cfg["framework"], "size": cfg["size"], "status": "unsupported", "message": str(e)}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
