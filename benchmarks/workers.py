"""One framework's measurement at one image size, in a process of its own:
`python -m benchmarks.workers CONFIG.json RESULT.json` (benchmarks.throughput starts it).

A process per (framework, size) keeps each framework's threads, allocator and peak memory
apart, and keeps MXNet out of the torch process (importing mxnet there can drop torch to one
thread). Each runner builds the train script's own `Backend` (vgg_X.train), so that end to end
is exactly a training run's step (`Backend.train_step` on the loader's NumPy batch), and compute
only calls the same module-level `train_step` on a batch already on the device. The peers are
put into that same Backend in place of the project's model (its optimiser rebuilt for them).

Inference is the model's forward pass and argmax, left on the device until `wait`: `timed`
launches step i+1 before it waits for step i. `vgg_X.train.predict` (what the training's
evaluation and the evaluate command call) copies each batch's logits back at once, which would
end that overlap, so the runners call the model as it does instead of calling it.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path

# The framework's package before anything else, as `python -m vgg_X.train` loads it: its __init__
# may set environment (threads) that NumPy or the framework reads when it loads.
if __name__ == "__main__" and len(sys.argv) > 3:
    importlib.import_module(sys.argv[3])

import numpy as np  # noqa: E402

from common.arch import flops_per_example, make_spec  # noqa: E402
from common.cli import parse_train_args  # noqa: E402
from common.contract import TrainConfig  # noqa: E402
from common.data import SAMPLE_DIR, Loader, load_fashion_mnist, sample_dataset  # noqa: E402
from common.errors import DeviceError  # noqa: E402
from common.training import keep_freed_memory  # noqa: E402


class Unsupported(Exception):
    """This framework cannot run the requested configuration here (no GPU, no bfloat16 on a GPU in MXNet...)."""


def _spec(cfg, size):
    return make_spec(cfg["arch"], in_channels=1, num_classes=10, image_size=size, width_ratio=cfg["width_ratio"])


def train_flags(cfg, size, compile=False) -> list[str]:
    """The train script's flags for this configuration, as the worker's Backend and the throughput
    cross-check's `python -m vgg_X.train` both take them; the optimiser is the d2l recipe's (plain
    SGD, lr 0.05). --precision goes to the train script's Backend, which alone decides what it
    means: the worker adds no autocast or AMP of its own, so that it times the step a training run takes."""
    arch = cfg["arch"] if isinstance(cfg["arch"], str) else repr(tuple(map(tuple, cfg["arch"])))
    return [
        f"--arch={arch}",
        f"--width-ratio={cfg['width_ratio']}",
        f"--resize={size}",
        f"--batch-size={cfg['batch_size']}",
        f"--device={cfg['device']}",
        "--optimizer=sgd",
        "--lr=0.05",
        "--momentum=0",
        f"--precision={cfg['precision']}",
        "--no-progress",
        *(["--compile"] if compile else []),
        *([] if cfg.get("cpu_workarounds", True) else ["--no-cpu-workarounds"]),
    ]


def _train_args(cfg, size, compile=False):
    """The training config of this configuration (train_flags)."""
    return TrainConfig.from_args(parse_train_args(train_flags(cfg, size, compile)))


def _no_gpu(framework):
    return Unsupported(
        f"--device gpu: no GPU is visible to {framework}; install its GPU build (docs/gpus.md) or use --device cpu"
    )


# ---------------------------------------------------------------------------- PyTorch


class Torch:
    """vgg_torch.train.Backend, with the project's model or torchvision's VGG."""

    def __init__(self, cfg, size, peer=False):
        import torch

        import vgg_torch.train as T

        self.torch, self.T = torch, T
        if cfg["device"] == "gpu" and not torch.cuda.is_available():
            raise _no_gpu("torch")
        if cfg["device"] == "gpu":  # float32 means float32 in all three (no TF32), as vgg_torch.evaluate
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        args = _train_args(cfg, size, compile=cfg["torch_compile"])
        self.b = b = T.Backend(args)
        if peer:
            b.net = torchvision_vgg(_spec(cfg, size)).to(b.dev)
            b.optimizer = T.make_optimizer(b.net, args)
            b.model = torch.compile(b.net) if cfg["torch_compile"] else b.net
        # in place (the optimiser keeps its parameters); a 1-channel NCHW batch is already
        # channels-last contiguous, so the convolutions run NHWC from the first one on
        b.net.to(
            memory_format={"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[
                cfg["torch_memory_format"]
            ]
        )
        self.parameters = sum(p.numel() for p in b.net.parameters())
        self.versions = {"torch": torch.__version__}
        self.threads = {
            "torch.get_num_threads": torch.get_num_threads(),
            **{k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
        }

    def to_device(self, x, y):
        dev = self.b.dev
        return self.torch.from_numpy(x).to(dev), self.torch.from_numpy(y).to(dev)

    def mode(self, train):
        self.b.start_epoch(0) if train else self.b.net.eval()

    def train_step(self, x, y):  # Backend.train_step without the host-to-device copy: its precision too
        return self.T.train_step(self.b.model, self.b.optimizer, x, y, self.b.dtype)

    def train_step_host(self, x, y):
        return self.b.train_step(x, y)

    def autocast(self):
        """The train script's autocast (vgg_torch.train.train_step's), for running the model outside
        its step: inference here, one layer at a time in benchmarks.profile_worker."""
        dtype = self.b.dtype
        return self.torch.autocast(self.b.dev.type, dtype=dtype, enabled=dtype is not None)

    def predict(self, x):  # as vgg_torch.train.predict, left on the device (see the module's docstring)
        with self.torch.inference_mode(), self.autocast():
            return self.b.model(x).argmax(1)

    def predict_host(self, x):
        return self.predict(self.torch.from_numpy(x).to(self.b.dev, non_blocking=True))

    def wait(self, out):
        return self.b.fetch(out) if isinstance(out, tuple) else out.cpu().numpy()

    def memory(self):
        if self.b.dev.type == "cuda":
            return {"device_peak_mb": self.torch.cuda.max_memory_allocated() / 2**20}
        return {}


def torchvision_vgg(spec):
    """torchvision's own VGG built from its `cfg` form at the spec's width. Two patches, so that
    it computes exactly what vgg_torch does: the first conv takes spec.in_channels (make_layers
    fixes 3), and the classifier's first Linear takes the real feature size (torchvision fixes
    512 * 7 * 7), with the adaptive average pool set to that size (at 224 px it is torchvision's
    own (7, 7); below, torchvision would upsample 1x1 maps to 7x7 and do 49x the dense work)."""
    from torch import nn
    from torchvision.models.vgg import VGG, make_layers

    if spec.lrn or any(k != 3 for b in spec.blocks for k in b.kernel_sizes) or spec.hidden_units != 4096:
        raise Unsupported(f"torchvision's VGG has no {spec.name} (LRN, 1x1 convs or a scaled classifier)")
    cfg = []
    for b in spec.blocks:
        cfg += [b.out_channels] * b.num_convs + ["M"]
    features = make_layers(cfg, batch_norm=spec.batch_norm)
    features[0] = nn.Conv2d(spec.in_channels, spec.blocks[0].out_channels, kernel_size=3, padding=1)
    net = VGG(features, num_classes=spec.num_classes, init_weights=True, dropout=spec.dropout)
    net.avgpool = nn.AdaptiveAvgPool2d(spec.feature_shape[1:])
    net.classifier[0] = nn.Linear(spec.flat_features, spec.hidden_units)
    return net


# ---------------------------------------------------------------------------- MXNet Gluon


class Gluon:
    """vgg_gluon.train.Backend, with the project's model or the model zoo's VGG."""

    def __init__(self, cfg, size, peer=False):
        import vgg_gluon  # noqa: F401  (restores np.bool before mxnet is imported)
        import vgg_gluon.train as G
        from vgg_gluon import parallel

        import mxnet as mx

        self.mx, self.G, self.parallel = mx, G, parallel
        if cfg["device"] == "gpu" and mx.context.num_gpus() == 0:
            raise _no_gpu("MXNet")
        args = _train_args(cfg, size)
        try:
            self.b = b = G.Backend(args)
        except DeviceError as e:  # bfloat16 on a GPU
            raise Unsupported(str(e)) from None
        if peer:
            b.net = gluon_zoo_vgg(_spec(cfg, size))
            b.net.initialize(ctx=b.ctx)
            b.net.hybridize(static_alloc=True, static_shape=True)  # as Backend does with the project's
            b.trainer = G.make_optimizer(b.net, args, b.dp.kvstore)
        mode = cfg["gluon_hybridize"]
        if mode != "static":  # hybridize again before the first call: the graph is not built yet
            b.net.hybridize(active=mode == "plain", static_alloc=False, static_shape=False)
        self.parameters = None  # the zoo infers its input sizes on the first batch
        self.versions = {"mxnet": mx.__version__}
        self.threads = {
            k: os.environ.get(k)
            for k in ("MXNET_CPU_WORKER_NTHREADS", "OMP_NUM_THREADS", "MXNET_OMP_MAX_THREADS", "OMP_WAIT_POLICY")
        }

    def to_device(self, x, y):
        return self.parallel.shard(self.b.dp, x, y)

    def mode(self, train):
        if train:
            self.b.start_epoch(0)  # Gluon's training mode itself is autograd.record(), in train_step

    def _count(self):
        if self.parameters is None:
            self.parameters = sum(int(np.prod(p.shape)) for p in self.b.net.collect_params().values())

    def train_step(self, xs, ys):
        out = self.G.train_step(self.b.net, self.b.trainer, xs, ys, self.b.batch_size)
        self._count()
        return out

    def train_step_host(self, x, y):
        return self.b.train_step(x, y)

    def predict(self, xs):  # as vgg_gluon.train.predict, left on the devices (see the module's docstring)
        return [self.b.net(x).argmax(axis=1) for x in xs]

    def predict_host(self, x):
        return self.predict(self.mx.gluon.utils.split_and_load(x, self.b.ctx))

    def wait(self, out):
        return self.b.fetch(out) if isinstance(out, tuple) else np.concatenate([o.asnumpy() for o in out])

    def memory(self):
        return {}


def gluon_zoo_vgg(spec):
    """The Gluon model zoo's VGG (mxnet.gluon.model_zoo.vision.vgg.VGG) at the spec's width:
    its (layers, filters) form. It infers input channels and flatten size on the first batch."""
    from mxnet.gluon.model_zoo.vision.vgg import VGG

    if spec.lrn or any(k != 3 for b in spec.blocks for k in b.kernel_sizes) or spec.hidden_units != 4096:
        raise Unsupported(f"the Gluon model zoo has no {spec.name} (LRN, 1x1 convs or a scaled classifier)")
    return VGG(
        [b.num_convs for b in spec.blocks],
        [b.out_channels for b in spec.blocks],
        classes=spec.num_classes,
        batch_norm=spec.batch_norm,
    )


# ---------------------------------------------------------------------------- Flax NNX


class Flax:
    """vgg_flax.train.Backend (nnx.jit train step and forward pass; NCHW in, NHWC inside)."""

    def __init__(self, cfg, size, peer=False):
        import flax
        import jax
        from flax import nnx

        import vgg_flax.train as F
        from vgg_flax import parallel

        self.jax, self.F, self.parallel = jax, F, parallel
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if cfg["device"] == "gpu" and not gpus:
            raise _no_gpu("JAX")
        if cfg["device"] == "gpu":  # float32 means float32 in all three (no TF32)
            jax.config.update("jax_default_matmul_precision", "float32")
        if cfg["flax_donate"]:  # XLA may then update parameters and optimiser state in place
            F.train_step = nnx.jit(F.train_step.fun, donate_argnums=(0, 1))
        self.b = b = F.Backend(_train_args(cfg, size))
        self.parameters = b.parameters
        self.versions = {"flax": flax.__version__, "jax": jax.__version__}
        self.threads = {"XLA_FLAGS": os.environ.get("XLA_FLAGS")}

    def to_device(self, x, y):
        return self.parallel.shard(self.b.dp, x, y.astype(np.int32))

    def mode(self, train):
        self.b.start_epoch(0) if train else self.b.model.eval()

    def train_step(self, x, y):
        return self.F.train_step(self.b.model, self.b.optimizer, x, y)

    def train_step_host(self, x, y):
        return self.b.train_step(x, y)

    def predict(self, x):  # vgg_flax.train.predict's compiled forward, left on the device (see the module's docstring)
        return self.F.forward(self.b.model, x).argmax(-1)

    def predict_host(self, x):
        return self.predict(*self.parallel.shard(self.b.dp, x))

    def wait(self, out):
        return self.b.fetch(out) if isinstance(out, tuple) else np.asarray(out)

    def memory(self):
        dev = self.b.dev
        stats = dev.memory_stats() if dev.platform != "cpu" else None
        return {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20} if stats else {}


def matmul(cfg: dict) -> dict:
    """The machine's matrix-multiply rate, GFLOP/s: best of `repeats` n x n products, for each n,
    in NumPy (its OpenBLAS; float32), torch (MKL or oneDNN on a CPU, cuBLAS on a GPU) and, on a CPU,
    oneDNN (the same product as a 1x1 convolution, which is what the frameworks' CPU convolutions
    run on); in float32 and in bfloat16, whatever the run's precision, so that every report names
    both rates of its machine. oneDNN matters where BLAS lags the CPU: on this project's AMD EPYC
    (Zen 5, AVX-512) NumPy's OpenBLAS picks its Haswell (AVX2) kernels and torch's float32 matmul
    reaches 175, oneDNN 330-420 GFLOP/s."""
    import torch

    out, dtypes = {}, ["float32", "bfloat16"]
    gpu = cfg["device"] == "gpu"
    if gpu and not torch.cuda.is_available():
        raise _no_gpu("torch")
    rng = np.random.default_rng(0)
    best_of = lambda fn: min(_clock(fn) for _ in range(cfg["matmul_repeats"]))
    for n in cfg["matmul_sizes"]:
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        if not gpu:
            out[f"numpy_float32_{n}"] = 2 * n**3 / best_of(lambda: a @ b) / 1e9
            for dt in dtypes:
                # (1, n, n, 1) channels-last input, (n, n, 1, 1) kernel: out[o, h] = sum_c w[o, c] x[c, h]
                x = torch.from_numpy(a).reshape(1, n, n, 1).to(getattr(torch, dt), memory_format=torch.channels_last)
                w = torch.from_numpy(b).reshape(n, n, 1, 1).to(getattr(torch, dt), memory_format=torch.channels_last)
                torch.nn.functional.conv2d(x, w)
                out[f"onednn_{dt}_{n}"] = 2 * n**3 / best_of(lambda: torch.nn.functional.conv2d(x, w)) / 1e9
        dev = "cuda" if gpu else "cpu"
        sync = torch.cuda.synchronize if gpu else (lambda: None)
        if gpu:
            torch.backends.cuda.matmul.allow_tf32 = False
        for dt in dtypes:
            ta, tb = (torch.from_numpy(m).to(dev, getattr(torch, dt)) for m in (a, b))
            (ta @ tb), sync()
            out[f"torch_{dt}_{n}"] = 2 * n**3 / best_of(lambda: (ta @ tb, sync())) / 1e9
    rate = lambda dt: max(v for k, v in out.items() if f"_{dt}_" in k)
    return {
        "framework": "matmul",
        "status": "ok",
        "gflops": out,
        "float32_gflops": rate("float32"),
        "bfloat16_gflops": rate("bfloat16"),
        "precision_gflops": rate(cfg["precision"]),
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "threads": {"torch.get_num_threads": torch.get_num_threads()},
    }


def _clock(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


PACKAGES = {
    "vgg_torch": "vgg_torch",
    "torchvision": "vgg_torch",
    "vgg_gluon": "vgg_gluon",
    "gluon_zoo": "vgg_gluon",
    "vgg_flax": "vgg_flax",
}
RUNNERS = {
    "vgg_torch": (Torch, False),
    "torchvision": (Torch, True),
    "vgg_gluon": (Gluon, False),
    "gluon_zoo": (Gluon, True),
    "vgg_flax": (Flax, False),
}

# ---------------------------------------------------------------------------- timing


def timed(step, wait, *, warmup, steps, seconds):
    """`warmup` untimed steps (the first one timed apart: it compiles), then `steps` timed ones
    (or, with steps=0, as many as fit in `seconds`, at least one). Step i+1 is launched before
    step i is waited for, as the training loop does, so asynchronous engines (XLA, MXNet, CUDA)
    stay busy and never run more than one step ahead. Throughput is steps / elapsed time: with
    that overlap one step has no time of its own, so the gaps between waits only show the spread."""
    first = warm = None
    t0 = time.perf_counter()
    for i in range(warmup):
        wait(step())
        if i == 0:
            first = time.perf_counter() - t0
    if warmup:
        warm = time.perf_counter() - t0
    marks, pending, n = [], None, 0
    start = time.perf_counter()
    while True:
        out = step()
        if pending is not None:
            wait(pending)
            marks.append(time.perf_counter())
        pending, n = out, n + 1
        if n >= steps if steps else time.perf_counter() - start >= seconds:
            break
    wait(pending)
    marks.append(time.perf_counter())
    gaps = [b - a for a, b in zip([start] + marks, marks)]
    return {"first_step_s": first, "warmup_s": warm, "steps": n, "seconds": marks[-1] - start, "gaps_s": gaps}


def _stats(chunks, batch, warmup):
    """Merge the chunks of one measurement; warm-up overhead = what the warm-up steps took beyond
    as many steady-state steps (compilation, graph building, first allocations)."""
    steps, seconds = sum(c["steps"] for c in chunks), sum(c["seconds"] for c in chunks)
    rate = batch * steps / seconds
    return {
        "examples_per_s": rate,
        "steps": steps,
        "seconds": seconds,
        "first_step_s": chunks[0]["first_step_s"],
        "warmup_steps": warmup,
        "warmup_overhead_s": chunks[0]["warmup_s"] - warmup * batch / rate,
        "gaps_s": [round(t, 5) for c in chunks for t in c["gaps_s"]],
    }


def _batches(loader):
    """Endless batches, epoch after epoch; closing this closes the loader's prefetch thread."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def measure(cfg: dict) -> dict:
    size, batch = cfg["size"], cfg["batch_size"]
    framework = cfg["framework"]
    cls, peer = RUNNERS[framework]
    spec = _spec(cfg, size)
    t = time.perf_counter()
    r = cls(cfg, size, peer=peer)
    build_s = time.perf_counter() - t
    rss_built = _rss_mb()
    rng = np.random.default_rng(0)
    x = rng.random((batch, spec.in_channels, size, size), dtype=np.float32)
    y = rng.integers(0, spec.num_classes, batch).astype(np.int64)
    xd, yd = r.to_device(x, y)
    rounds = cfg["rounds"]
    kw = dict(steps=-(-cfg["steps"] // rounds), seconds=cfg["seconds"] / rounds)

    sample = Path(cfg["data_dir"]).resolve() == SAMPLE_DIR
    data = sample_dataset() if sample else load_fashion_mnist(cfg["data_dir"], download=False, allow_sample=False)
    batches = _batches(
        Loader(
            data.train_images,
            data.train_labels,
            batch_size=batch,
            resize=size,
            seed=0,
            shuffle=True,
            drop_last=True,
            prefetch=cfg["prefetch"],
        )
    )  # as common.training.run

    out = {}
    try:
        for phase, step, host in (
            ("train", r.train_step, r.train_step_host),
            ("infer", lambda x, y: r.predict(x), lambda x, y: r.predict_host(x)),
        ):
            r.mode(phase == "train")
            compute, e2e = [], []
            # compute-only and end-to-end alternate in `rounds` chunks, so that a change in the
            # machine's load during the measurement falls on both alike (their ratio is a goal)
            for k in range(rounds):
                compute.append(timed(lambda: step(xd, yd), r.wait, warmup=cfg["warmup"] if k == 0 else 0, **kw))
                # the program is compiled by now: one warm-up step starts the loader's prefetching
                e2e.append(timed(lambda: host(*next(batches)), r.wait, warmup=int(k == 0), **kw))
            out[phase] = {"compute": _stats(compute, batch, cfg["warmup"]), "end_to_end": _stats(e2e, batch, 1)}
    finally:
        batches.close()
    fwd = flops_per_example(spec)
    return {
        "framework": framework,
        "size": size,
        "status": "ok",
        "model": spec.name,
        "parameters": r.parameters,
        "forward_flops": fwd,
        "train_flops": 3 * fwd,
        "build_s": build_s,
        "rss_after_build_mb": rss_built,
        "peak_rss_mb": _rss_mb(),
        **r.memory(),
        "versions": {**r.versions, "numpy": np.__version__},
        "threads": r.threads,
        **out,
    }


def main(argv=None):
    cfg_path, result_path = (argv or sys.argv[1:])[:2]
    cfg = json.loads(Path(cfg_path).read_text())
    keep_freed_memory()  # as common.training.run does for the train scripts; the peers get it too
    try:
        result = matmul(cfg) if cfg["framework"] == "matmul" else measure(cfg)
    except Unsupported as e:
        result = {"framework": cfg["framework"], "size": cfg.get("size"), "status": "unsupported", "message": str(e)}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
