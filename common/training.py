"""The training loop and its reports, shared by the three frameworks (the Keras 3 way:
one loop, one small backend object per framework). No framework is imported here.

A backend (`vgg_torch.train.Backend`, `vgg_gluon.train.Backend`, `vgg_flax.train.Backend`)
owns the model, the optimiser and the device, and offers:

    framework, device, versions, parameters, threads      what the reports print
    primary, shard            (optional) data parallelism: only the primary process prints and writes;
                              it trains on part shard[0] of shard[1] of each global batch, and
                              fetch and evaluate return totals over all parts
    start_epoch(epoch)        training mode; reseed dropout from (seed, epoch)
    set_lr(lr)                the learning rate of the next step (common.recipe.learning_rate)
    canonical() / load_canonical(tensors)   the model's weights as canonical NumPy tensors, and back
                              (vgg_X.weights.to_canonical / from_canonical): --init-from
    train_step(x, y)          one update on a NumPy NCHW batch; returns device scalars
                              (summed loss, #correct), left unread so the device can run ahead
    fetch(out)                -> (float loss_sum, int correct): waits for that step
    evaluate(loader)          -> accuracy over the whole loader, in inference mode
    save_checkpoint(folder, epoch) / load_checkpoint(folder) -> epoch
    export(path)              the weights alone, canonical safetensors (vgg_X.weights.save)

`run(args, backend_factory)` does the rest: data, epochs, progress bars, the d2l epoch
line, metrics.json, the PNG, checkpoints, NaN detection and --resume.

Reports, in --out (default runs/<framework>/):
    metrics.json    config, data set, device, versions, one entry per epoch, d2l-style points
                    within each epoch ("curve"), and every step's training loss ("step_loss", the
                    batch mean to 7 significant digits, float32's precision); rewritten after every epoch
    metrics.png     train loss, train and test accuracy against epochs, as d2l draws them
    checkpoint-epochN/ + checkpoint.json   the last finished epoch (model, optimiser, RNG)
    model.safetensors   the last epoch's weights in the neutral format (common.weights), for
                        `python -m vgg_X.evaluate --weights` in any of the three frameworks
"""
from __future__ import annotations

import ctypes
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .arch import make_spec
from .cli import fail, spec_kwargs, train_parser
from .data import DataError, Loader, load_fashion_mnist
from .recipe import describe_layers, learning_rate, start_from
from .weights import WeightsError

# Flags that define the run's arithmetic: --resume refuses to continue with different ones.
RESUME_KEYS = ("arch", "width_ratio", "scale_classifier", "dropout", "resize", "batch_size", "lr",
               "optimizer", "momentum", "normalize", "init", "seed", "max_steps", "init_from", "init_partial",
               "weight_decay", "decay_all", "lr_schedule", "warmup_epochs", "lr_step_epochs", "lr_factor",
               "plateau_patience", "augment", "precision")
CURVE_POINTS = 5  # points per epoch in the plot's training curves, as d2l's animator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of giving it back to the system.

    By default glibc serves every block above 32 MiB with an mmap of its own and unmaps it when
    it is freed, so each training step at 224 px (activations of 100-400 MB each) faults in and
    zeroes fresh pages for every large tensor, in PyTorch and XLA alike (MXNet pools its memory
    itself). With mmap off for allocations (M_MMAP_MAX 0) and trimming off (M_TRIM_THRESHOLD -1,
    as `man mallopt` documents), freed blocks stay on malloc's free lists and the next step
    reuses them: what MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1 would do, or the tcmalloc or
    jemalloc that PyTorch's CPU performance guide preloads. Measured on one core of this 2-core
    machine, VGG-11/4 at 224 px, batch 32, training examples/s: PyTorch 33 -> 47, Flax 25 -> 35,
    Gluon 49 -> 48. The price: the process keeps its peak memory until it exits, so the train
    scripts and the benchmark's workers call this, the library does not.
    Returns False (and changes nothing) where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): its own allocator's ways
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1


def write_atomic(path, data: bytes | str) -> None:
    """Write to a temp file beside `path`, then rename: readers see the old or the new file, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the reports from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def padded_batches(loader: Loader):
    """Evaluation batches all of `loader.local_batch_size` rows (the batch, or this process's part of
    it in data parallelism): the last one is padded with zeros, and
    `valid` says how many rows are real. One shape means one compiled program (XLA, a
    static-shape Gluon graph) instead of a second compilation for the remainder."""
    for x, y in loader:
        valid = len(x)
        if valid < loader.local_batch_size:
            x = np.concatenate([x, np.zeros((loader.local_batch_size - valid, *x.shape[1:]), x.dtype)])
        yield x, y, valid


def pick_device(requested: str, gpu_visible: bool, framework: str) -> bool:
    """True for the GPU. `auto` takes one when visible; `gpu` without one is an expected error."""
    if requested == "gpu" and not gpu_visible:
        fail(f"--device gpu: no GPU is visible to {framework}. Install its GPU build (docs/gpus.md) "
             "or use --device cpu")
    return requested != "cpu" and gpu_visible


def epoch_line(e: dict) -> str:
    """d2l's train_ch6 report, one per epoch."""
    return (f"loss {e['loss']:.3f}, train acc {e['train_acc']:.3f}, test acc {e['test_acc']:.3f}, "
            f"{e['examples_per_sec']:.1f} examples/sec on {e['device']}")


def save_plot(path, metrics: dict) -> None:
    """Train loss, train accuracy (within-epoch points) and test accuracy (per epoch), one axes, as d2l."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: slow, and only the plot needs it
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    curve, epochs = metrics["curve"], metrics["epochs"]
    ax.plot([p["epoch"] for p in curve], [p["loss"] for p in curve], "-", label="train loss")
    ax.plot([p["epoch"] for p in curve], [p["train_acc"] for p in curve], "m--", label="train acc")
    ax.plot([e["epoch"] for e in epochs], [e["test_acc"] for e in epochs], "g-.o", label="test acc")
    ax.set(xlabel="epoch", xlim=(0, max(1, len(epochs))),
           title=f"{metrics['framework']}: {metrics['model']} on {metrics['device']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


class Run:
    """The files of one run in `out`: metrics.json, metrics.png, model.safetensors and the checkpoint."""

    def __init__(self, out):
        self.out = Path(out)
        self.metrics_path, self.plot_path = self.out / "metrics.json", self.out / "metrics.png"
        self.pointer = self.out / "checkpoint.json"
        self.model_path = self.out / "model.safetensors"

    def last_checkpoint(self):
        """(epoch, folder) of the last good checkpoint, or None."""
        if not self.pointer.is_file():
            return None
        p = json.loads(self.pointer.read_text())
        return p["epoch"], self.out / p["folder"]

    def save_checkpoint(self, backend, epoch: int) -> None:
        """Written into a temp folder, renamed into place, then the pointer is switched, then older
        folders go: a crash at any moment leaves the previous checkpoint whole and pointed to."""
        final = self.out / f"checkpoint-epoch{epoch}"
        tmp = Path(tempfile.mkdtemp(dir=self.out, prefix=".checkpoint-"))
        try:
            backend.save_checkpoint(tmp, epoch)
            os.chmod(tmp, 0o777 & ~_umask())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        write_json(self.pointer, {"epoch": epoch, "folder": final.name, "framework": backend.framework})
        for old in self.out.glob("checkpoint-epoch*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
        # the weights alone, in the neutral format that every framework's evaluate reads
        backend.export(self.model_path)

    def write(self, metrics: dict) -> None:
        write_json(self.metrics_path, metrics)
        if metrics["epochs"] or metrics["curve"]:
            save_plot(self.plot_path, metrics)


class _NoFiles(Run):
    """The other processes of a data-parallel job: they read the run's files but never write them."""

    def save_checkpoint(self, backend, epoch: int) -> None:
        pass

    def write(self, metrics: dict) -> None:
        pass


def _config(args) -> dict:
    return json.loads(json.dumps(vars(args), default=list))  # tuples -> lists, as they come back from disk


def _resume(files: Run, args, framework: str):
    """(first epoch, earlier metrics) from --out, after checking that the flags match."""
    last = files.last_checkpoint()
    if last is None or not files.metrics_path.is_file():
        fail(f"--resume: no checkpoint in {files.out}; run without --resume to start, or point --out at an earlier run")
    old = json.loads(files.metrics_path.read_text())
    if old.get("framework") != framework:
        fail(f"--resume: {files.out} holds a {old.get('framework')} run, not {framework}; use another --out")
    new = _config(args)
    # a run from before a flag existed ran at its default
    was = {**_config(train_parser("", "").parse_args([])), **old["config"]}
    changed = [f"--{k.replace('_', '-')} {was.get(k)} -> {new[k]}" for k in RESUME_KEYS if was.get(k) != new[k]]
    if changed:
        fail(f"--resume: flags differ from the run in {files.out} ({'; '.join(changed)}); "
             "give the same flags, or start a new run in another --out")
    if args.lr_schedule == "cosine" and old["config"].get("epochs") != args.epochs:
        fail(f"--resume: --lr-schedule cosine spans the whole run, which had --epochs {old['config'].get('epochs')}; "
             "resume with that, or start a new run in another --out")
    epoch = last[0]
    old["epochs"] = old["epochs"][:epoch]
    old["step_loss"] = old.get("step_loss", [])[:epoch * old.get("steps_per_epoch", 0)]
    old["curve"] = [p for p in old["curve"] if p["epoch"] <= epoch]
    return epoch, old


def train_epoch(backend, loader: Loader, epoch: int, steps: int, progress, metrics: dict, lr_at=None):
    """One epoch; returns (loss, train acc, examples, examples/s, seconds) or raises FloatingPointError.
    examples/s leaves out the first step, which in Flax, Gluon and torch.compile includes compiling.
    lr_at(k): the learning rate of the epoch's step k (0-based), set before each step."""
    backend.start_epoch(epoch)
    every = max(1, steps // CURVE_POINTS)
    loss_sum = correct = seen = 0
    bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{metrics['config']['epochs']}", disable=not progress,
               unit="batch", leave=False, dynamic_ncols=True)

    def account(out, n, step):
        nonlocal loss_sum, correct, seen, timed_from
        l, c = backend.fetch(out)
        if not math.isfinite(l):
            raise FloatingPointError(f"the loss became {l} at epoch {epoch + 1}, step {step}")
        loss_sum, correct, seen = loss_sum + l, correct + c, seen + n
        metrics["step_loss"].append(float(f"{l / n:.7g}"))
        if step == 1:  # the clock starts once the first step is done: it carries the compilation
            timed_from = (time.perf_counter(), seen)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        if step % every == 0 or step == steps:
            metrics["curve"].append(dict(epoch=epoch + step / steps, loss=loss_sum / seen, train_acc=correct / seen))

    start, pending = time.perf_counter(), None
    timed_from = (start, 0)
    batches = loader.epoch(epoch)
    try:
        for step, (x, y) in enumerate(batches, 1):
            if lr_at:
                backend.set_lr(lr_at(step - 1))
            out = backend.train_step(x, y)
            if pending:  # read the previous step's numbers only now, so that the device stays busy
                account(*pending)
            pending = (out, len(y) * loader.shard[1], step)  # fetch sums over every process's part
            if step == steps:
                break
        if pending:
            account(*pending)
    finally:
        batches.close()  # stops the loader's prefetch thread when we leave early
        bar.close()
    end = time.perf_counter()
    t0, n0 = timed_from if seen > timed_from[1] else (start, 0)  # a one-step epoch has nothing else to time
    return loss_sum / seen, correct / seen, seen, (seen - n0) / (end - t0), end - start


def _init_from(args, backend, say) -> None:
    """--init-from FILE [--init-partial]: the model starts from the file's weights (common.recipe.start_from)."""
    try:
        tensors, copied, drawn = start_from(args.init_from, backend.canonical(), args.init_partial)
        backend.load_canonical(tensors)  # vgg_X.weights.from_canonical: every name and shape checked
    except WeightsError as e:
        fail(str(e))
    if args.init_partial:
        say(f"--init-partial: copied {len(copied)} tensors from {args.init_from} ({describe_layers(copied)}); "
            f"drew {len(drawn)} (--init {args.init}: {describe_layers(drawn)})")
    else:
        say(f"starting from the weights in {args.init_from}")


def run(args, make_backend) -> dict:
    """Train `make_backend(args)` as the flags say; returns the final metrics."""
    framework = make_backend.framework
    keep_freed_memory()
    files = Run(args.out or Path("runs") / framework)
    files.out.mkdir(parents=True, exist_ok=True)
    try:
        data = load_fashion_mnist(args.data_dir, progress=args.progress is not False)
    except DataError as e:
        fail(str(e))
    if len(data.train_images) < args.batch_size:
        fail(f"--batch-size {args.batch_size} is larger than the training set ({len(data.train_images):,} images)")
    first, old = _resume(files, args, framework) if args.resume else (0, None)
    backend = make_backend(args)
    if not getattr(backend, "primary", True):  # data parallel: the first process prints and writes for all
        files, say = _NoFiles(files.out), lambda *a, **k: None
    else:
        say = print
    if not args.resume and files.last_checkpoint():
        say(f"note: starting afresh in {files.out}; its checkpoint will be replaced (--resume continues it)")
    spec = make_spec(args.arch, **spec_kwargs(args, args.resize))
    metrics = old or {}
    metrics.update(
        framework=framework, versions={**backend.versions, "python": platform.python_version(), "numpy": np.__version__},
        model=spec.name, parameters=backend.parameters, device=backend.device, threads=backend.threads,
        config=_config(args), data={"source": data.source, "describe": data.describe()},
        status="running", message="")
    metrics.setdefault("epochs", [])
    metrics.setdefault("curve", [])
    metrics.setdefault("step_loss", [])
    say(f"{framework} ({', '.join(f'{k} {v}' for k, v in backend.versions.items())}): {spec.name} at "
          f"{args.resize} px, {backend.parameters:,} parameters, on {backend.device}"
          f"{' (--device auto)' if args.device == 'auto' else ''} ({backend.threads})")
    say(data.describe())
    if args.init_from and not first:
        _init_from(args, backend, say)
    if first:
        backend.load_checkpoint(last := files.last_checkpoint()[1])
        say(f"resumed from {last} after epoch {first}")
    if first >= args.epochs:
        say(f"nothing to do: {files.out} already holds {first} epochs (ask for more with --epochs)")

    shard = getattr(backend, "shard", (0, 1))  # data parallel: this process's part of each global batch
    train = Loader(data.train_images, data.train_labels, batch_size=args.batch_size, resize=args.resize,
                   seed=args.seed, normalize=args.normalize, shuffle=True, shard=shard, augment=args.augment,
                   drop_last=True)  # every step sees one batch shape: one compiled program, one graph
    test = Loader(data.test_images, data.test_labels, batch_size=args.batch_size, resize=args.resize,
                  normalize=args.normalize, shuffle=False, shard=shard)
    steps = min(len(train), args.max_steps or len(train))
    metrics["steps_per_epoch"] = steps
    progress = (sys.stderr.isatty() if args.progress is None else args.progress) and say is print
    for epoch in range(first, args.epochs):
        try:
            accs = [e["test_acc"] for e in metrics["epochs"]]  # what the plateau schedule reads
            lr_at = lambda k, epoch=epoch, accs=accs: learning_rate(args, epoch * steps + k, steps, accs)
            loss, train_acc, seen, speed, seconds = train_epoch(backend, train, epoch, steps, progress, metrics, lr_at)
        except FloatingPointError as e:
            last = files.last_checkpoint()
            kept = f"the last good checkpoint ({last[1]}, epoch {last[0]}) is kept" if last else "no checkpoint was written"
            metrics.update(status="diverged", message=f"{e}; {kept}")
            files.write(metrics)
            fail(f"{e}: training diverged. Lower the learning rate (now --lr {args.lr}; try {args.lr / 10:g}); "
                 f"{kept}", code=1)
        except KeyboardInterrupt:
            metrics.update(status="interrupted", message=f"interrupted during epoch {epoch + 1}")
            files.write(metrics)
            fail(f"interrupted during epoch {epoch + 1}; --resume continues from the last checkpoint", code=130)
        t = time.perf_counter()
        test_acc = backend.evaluate(test)
        entry = dict(epoch=epoch + 1, loss=loss, train_acc=train_acc, test_acc=test_acc,
                     examples_per_sec=speed, examples=seen, train_seconds=seconds,
                     eval_seconds=time.perf_counter() - t, device=backend.device,
                     lr=[lr_at(0), lr_at(steps - 1)])  # the first and last step's learning rate
        metrics["epochs"].append(entry)
        say(f"epoch {epoch + 1}/{args.epochs}: {epoch_line(entry)}", flush=True)
        files.save_checkpoint(backend, epoch + 1)
        files.write(metrics)
    metrics.update(status="finished")
    files.write(metrics)
    say(f"wrote {files.metrics_path}, {files.plot_path}, {files.model_path} and the checkpoint in {files.out}")
    return metrics
