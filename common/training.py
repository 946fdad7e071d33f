"""The training loop, shared by the three frameworks (one loop, one small backend object per
framework, common.contract.Backend). No framework is imported here.

`run(config, vgg_X.train.Backend)` does the rest: data, epochs, progress bars, the d2l epoch line,
metrics.json, the PNG, checkpoints, NaN detection, --resume, the lock on --out and Ctrl-C (the
files it writes there: common.runfiles). It raises typed errors (RunError and its kinds,
DataError, ArchError) with the message a user needs; only the command line
(`common.cli.main_guard`) turns them into exit codes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .contract import Backend, TrainConfig, check_backend
from .data import Loader, load_fashion_mnist
from .errors import DeviceError, Diverged, RunError
from .recipe import describe_layers, learning_rate, start_from
from .runfiles import Run, check_resume
from .runfolder import check_out
from .signals import Terminated, exit_code, finish_first

CURVE_POINTS = 5  # points per epoch in the plot's training curves, as d2l's animator


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of unmapping every block above 32 MiB
    (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD -1): 224 px training no longer faults in fresh pages
    for its large activations every step (one core: PyTorch 33 -> 47 ex/s; benchmarks/README.md).
    The process keeps its peak memory until it exits, so the train scripts and the benchmark's
    workers call this, the library does not. Returns False (and changes nothing) where the C
    library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): its own allocator's ways
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1


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


def accuracy(backend: Backend, loader: Loader) -> float:
    """The fraction of the loader's images whose class backend.predict gets right, over every
    process's part: the one evaluation loop (each epoch's test accuracy, the evaluate commands)."""
    correct = total = 0
    for x, y, valid in padded_batches(loader):
        correct += int((backend.predict(x).argmax(1)[:valid] == y).sum())
        total += valid
    correct, total = backend.total(correct, total)
    return correct / total


def pick_device(requested: str, gpu_visible: bool, framework: str) -> bool:
    """True for the GPU. `auto` takes one when visible; `gpu` without one raises DeviceError."""
    if requested == "gpu" and not gpu_visible:
        raise DeviceError(
            f"--device gpu: no GPU is visible to {framework}. Install its GPU build (docs/gpus.md) or use --device cpu"
        )
    return requested != "cpu" and gpu_visible


def epoch_seed(seed: int, epoch: int) -> int:
    """Dropout's randomness in epoch e depends on (seed, e) alone, so a resumed run draws what an
    uninterrupted one would have (MXNet cannot export its RNG state: reseeding at each epoch start
    is what makes its resumed runs exact). The same rule in the three frameworks."""
    return int(np.random.default_rng((seed, epoch, 1)).integers(2**31))


def epoch_line(e: dict) -> str:
    """d2l's train_ch6 report, one per epoch."""
    return (
        f"loss {e['loss']:.3f}, train acc {e['train_acc']:.3f}, test acc {e['test_acc']:.3f}, "
        f"{e['examples_per_sec']:.1f} examples/sec on {e['device']}"
    )


def train_epoch(backend: Backend, loader: Loader, epoch: int, steps: int, progress, metrics: dict, lr_at=None):
    """One epoch; returns (loss, train acc, examples, examples/s, seconds) or raises FloatingPointError;
    a KeyboardInterrupt comes out saying the epoch and step. examples/s leaves out the first step,
    which in Flax, Gluon and torch.compile includes compiling. lr_at(k): the learning rate of the
    epoch's step k (0-based), set before each step."""
    backend.start_epoch(epoch)
    every = max(1, steps // CURVE_POINTS)
    loss_sum = correct = seen = 0
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{metrics['config']['epochs']}",
        disable=not progress,
        unit="batch",
        leave=False,
        dynamic_ncols=True,
    )

    def account(out, n, step):
        nonlocal loss_sum, correct, seen, timed_from
        loss, c = backend.fetch(out)
        if not math.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss} at epoch {epoch + 1}, step {step}")
        loss_sum, correct, seen = loss_sum + loss, correct + c, seen + n
        metrics["step_loss"].append(float(f"{loss / n:.7g}"))
        if step == 1:  # the clock starts once the first step is done: it carries the compilation
            timed_from = (time.perf_counter(), seen)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
        if step % every == 0 or step == steps:
            metrics["curve"].append(dict(epoch=epoch + step / steps, loss=loss_sum / seen, train_acc=correct / seen))

    start, pending, step = time.perf_counter(), None, 0
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
            if step == 1:  # wait for the first step alone: the clock starts when it is done, before
                account(*pending)  # the second starts (a synchronous step, as PyTorch's on a CPU, would
                pending = None  # otherwise have finished the second too, and examples/s count it untimed)
            if step == steps:
                break
        if pending:
            account(*pending)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (the same stop)
        raise type(e)(f"epoch {epoch + 1}, step {max(step, 1)} of {steps}") from None
    finally:
        batches.close()  # stops the loader's prefetch thread when we leave early
        bar.close()
    end = time.perf_counter()
    t0, n0 = timed_from if seen > timed_from[1] else (start, 0)  # a one-step epoch has nothing else to time
    return loss_sum / seen, correct / seen, seen, (seen - n0) / (end - t0), end - start


def _init_from(config: TrainConfig, backend: Backend, say) -> None:
    """--init-from FILE [--init-partial]: the model starts from the file's weights (common.recipe.start_from).
    Raises WeightsError for a file that does not fit."""
    tensors, copied, drawn = start_from(config.init_from, backend.canonical(), config.init_partial)
    backend.load_canonical(tensors)  # vgg_X.weights.from_canonical: every name and shape checked
    if config.init_partial:
        say(
            f"--init-partial: copied {len(copied)} tensors from {config.init_from} ({describe_layers(copied)}); "
            f"drew {len(drawn)} (--init {config.init}: {describe_layers(drawn)})"
        )
    else:
        say(f"starting from the weights in {config.init_from}")


@dataclasses.dataclass
class _Started:
    """What start-up hands to the epoch loop."""

    backend: Backend
    files: Run
    metrics: dict
    say: object
    train: Loader
    test: Loader
    first: int
    steps: int
    progress: bool


def _start(config: TrainConfig, make_backend: type[Backend], files: Run) -> _Started:
    """Everything before the first step, in this order: --out and the checks of --resume or of a
    fresh run (before the slow part), the data, the backend, the lock and the checks again under
    it, metrics.json's start and the header lines, the weights to start from, the loaders."""
    framework = make_backend.framework
    _check_early(config, framework, files)
    data = _read_data(config, files)
    backend, say = _build_backend(config, make_backend, files)
    old, candidates, held = _check_under_lock(config, framework, files, say)
    metrics = _start_metrics(config, framework, backend, data, files, old)
    _say_header(config, framework, backend, data, files, held, say)
    first = _first_epoch(config, backend, files, metrics, candidates, say)
    train, test = _loaders(config, data, backend.shard)
    steps = min(len(train), config.max_steps or len(train))
    metrics["steps_per_epoch"] = steps
    progress = (sys.stderr.isatty() if config.progress is None else config.progress) and files.writes
    return _Started(backend, files, metrics, say, train, test, first, steps, progress)


def _check_early(config: TrainConfig, framework: str, files: Run) -> None:
    """--out, and the read-only checks of --resume or of a fresh run: fail before the slow part
    (they are repeated under the lock, _check_under_lock)."""
    check_out(files.out, "train")
    if not launched():  # one process: the lock first, before the slow part (several: the primary, below)
        files.claim()
    if config.resume:
        check_resume(files, config, framework)
    else:
        files.check_fresh(config.overwrite)


def _read_data(config: TrainConfig, files: Run):
    files.where = "start-up (reading the data)"
    data = load_fashion_mnist(config.data_dir, progress=config.progress is not False)
    if len(data.train_images) < config.batch_size:
        raise RunError(
            f"--batch-size {config.batch_size} is larger than the training set ({len(data.train_images):,} images)"
        )
    return data


def _build_backend(config: TrainConfig, make_backend: type[Backend], files: Run):
    """(the backend, the print of the process that writes): the backend built and checked
    against the contract, then the lock on --out, which is the project's from now on."""
    files.where = "start-up (building the model)"
    backend = make_backend(config)
    check_backend(backend)
    files.writes = backend.primary  # data parallel: the first process prints and writes for all
    say = print if files.writes else (lambda *a, **k: None)
    files.claim()
    if files.writes:
        files.lock.mark()  # the folder is this project's from now on
    return backend, say


def _check_under_lock(config: TrainConfig, framework: str, files: Run, say):
    """(earlier metrics, checkpoints to try, what --overwrite replaces): --resume's or a fresh
    run's checks again, now that this run holds the lock."""
    if config.resume:
        old, candidates, problem = check_resume(files, config, framework)
        files.saved, files.id = candidates[0], old.get("run") or files.id
        if problem:
            say(f"warning: {problem}; looking for the newest checkpoint folder that loads", file=sys.stderr)
        return old, candidates, None
    held = files.replaces = files.check_fresh(config.overwrite)
    return None, None, held


def _start_metrics(config: TrainConfig, framework: str, backend: Backend, data, files: Run, old: dict | None) -> dict:
    """metrics.json as the run starts (an earlier run's, continued by --resume); from here on an
    interrupt is recorded in it."""
    metrics = old or {}
    metrics.update(
        framework=framework,
        versions={**backend.versions, "python": platform.python_version(), "numpy": np.__version__},
        model=config.spec.name,
        parameters=backend.parameters,
        device=backend.device,
        threads=backend.threads,
        config=config.as_dict(),
        data={"source": data.source, "describe": data.describe()},
        run=files.id,
        status="running",
        message="",
    )
    metrics.setdefault("epochs", [])
    metrics.setdefault("curve", [])
    metrics.setdefault("step_loss", [])
    files.metrics = metrics
    return metrics


def _say_header(config: TrainConfig, framework: str, backend: Backend, data, files: Run, held, say) -> None:
    say(
        f"{framework} ({', '.join(f'{k} {v}' for k, v in backend.versions.items())}): {config.spec.name} at "
        f"{config.resize} px, {backend.parameters:,} parameters, on {backend.device}"
        f"{' (--device auto)' if config.device == 'auto' else ''} ({backend.threads})"
    )
    say(data.describe())
    if held:
        say(
            f"note: --overwrite: {files.out} holds an earlier run ({held}); it is kept as it was until this "
            "run's first checkpoint replaces it"
        )


def _first_epoch(config: TrainConfig, backend: Backend, files: Run, metrics: dict, candidates, say) -> int:
    """The weights to start from (--init-from, or --resume's checkpoint, whose epoch this returns;
    metrics.json then drops what came after it), else the backend's own draw: 0."""
    first = 0
    if config.init_from and not config.resume:
        files.where = "start-up (loading --init-from)"
        _init_from(config, backend, say)
    if config.resume:
        files.where = "start-up (loading the checkpoint)"
        first = files.restore(backend, candidates, say)
        metrics["epochs"] = metrics["epochs"][:first]
        metrics["curve"] = [p for p in metrics["curve"] if p["epoch"] <= first]
        metrics["step_loss"] = metrics["step_loss"][: first * metrics.get("steps_per_epoch", 0)]
        say(f"resumed from {files.saved[1]} after epoch {first}")
    if first >= config.epochs:
        say(f"nothing to do: {files.out} already holds {first} epochs (ask for more with --epochs)")
    return first


def _loaders(config: TrainConfig, data, shard: tuple[int, int]) -> tuple[Loader, Loader]:
    """(train, test) loaders; shard: in data parallelism, this process's part of each global batch."""
    train = Loader(
        data.train_images,
        data.train_labels,
        batch_size=config.batch_size,
        resize=config.resize,
        seed=config.seed,
        normalize=config.normalize,
        pixels=config.pixels,
        shuffle=True,
        shard=shard,
        augment=config.augment,
        drop_last=True,
    )  # every step sees one batch shape: one compiled program, one graph
    return train, evaluation_loader(config, data, shard)


def evaluation_loader(config: TrainConfig, data, shard: tuple[int, int]) -> Loader:
    """The test set, in order, as the model saw images in training (resize, normalize, pixels): what
    each epoch's evaluation reads, and the evaluate commands."""
    return Loader(
        data.test_images,
        data.test_labels,
        batch_size=config.batch_size,
        resize=config.resize,
        normalize=config.normalize,
        pixels=config.pixels,
        shuffle=False,
        shard=shard,
    )


def _epochs(config: TrainConfig, s: _Started) -> dict:
    """The epoch loop: train, evaluate, report, checkpoint."""
    backend, files, metrics, say = s.backend, s.files, s.metrics, s.say
    for epoch in range(s.first, config.epochs):
        files.where = f"epoch {epoch + 1}"
        accs = [e["test_acc"] for e in metrics["epochs"]]  # what the plateau schedule reads
        lr_at = lambda k, epoch=epoch, accs=accs: learning_rate(config, epoch * s.steps + k, s.steps, accs)  # noqa: E731
        try:
            loss, train_acc, seen, speed, seconds = train_epoch(
                backend, s.train, epoch, s.steps, s.progress, metrics, lr_at
            )
        except FloatingPointError as e:
            kept = (
                f"the last good checkpoint ({files.saved[1]}, epoch {files.saved[0]}) is kept"
                if files.saved
                else "no checkpoint was written"
            )
            metrics.update(status="diverged", message=f"{e}; {kept}")
            files.write(metrics)
            raise Diverged(
                f"{e}: training diverged. Lower the learning rate (now --lr {config.lr}; "
                f"try {config.lr / 10:g}); {kept}"
            ) from None
        files.where = f"the evaluation after epoch {epoch + 1}"
        t = time.perf_counter()
        test_acc = accuracy(backend, s.test)
        entry = dict(
            epoch=epoch + 1,
            loss=loss,
            train_acc=train_acc,
            test_acc=test_acc,
            examples_per_sec=speed,
            examples=seen,
            train_seconds=seconds,
            eval_seconds=time.perf_counter() - t,
            device=backend.device,
            lr=[lr_at(0), lr_at(s.steps - 1)],  # the first and last step's learning rate
        )
        metrics["epochs"].append(entry)
        say(f"epoch {epoch + 1}/{config.epochs}: {epoch_line(entry)}", flush=True)
        files.where = f"the checkpoint of epoch {epoch + 1} (written to the end first)"
        with finish_first():
            if files.replaces:  # --overwrite: the earlier run stays whole until this run's first checkpoint is
                files.save_checkpoint(backend, epoch + 1)
                files.write(metrics)
            else:
                files.write(metrics)  # before the checkpoint: metrics.json never lags behind what --resume loads
                files.save_checkpoint(backend, epoch + 1)
            files.export(backend)
    with finish_first():
        if s.first >= config.epochs:
            files.export(backend)  # a run killed after its last checkpoint may have lost its weights file
        metrics.update(status="finished", message="")
        files.write(metrics)
    say(f"wrote {files.metrics_path}, {files.plot_path}, {files.model_path} and the checkpoint in {files.out}")
    return metrics


# Set by the launchers of several processes (torchrun, MXNet's tools/launch.py, jax.distributed's):
# then only the primary process claims --out, once its backend has said which process it is.
LAUNCHERS = ("WORLD_SIZE", "DMLC_ROLE", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES")


def launched() -> bool:
    return any(k in os.environ for k in LAUNCHERS)


def run(config: TrainConfig, make_backend: type[Backend]) -> dict:
    """Train `make_backend(config)` (a vgg_X.train.Backend) as the config says; returns the final
    metrics. Holds the lock on --out for the run's whole life. Raises RunError (or one of its
    kinds: Interrupted after SIGINT or SIGTERM, a RunError naming the file when one cannot be
    written), DataError or ArchError."""
    files = Run(config.out or Path("runs") / make_backend.framework)
    try:
        return _epochs(config, _start(config, make_backend, files))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (signals.Terminated) under main_guard
        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        raise files.interrupted(str(e), what, exit_code(e)) from None
    except OSError as e:
        if not str(e.filename or "").startswith(str(files.out)):
            raise  # not one of the run's files
        raise files.failed(e) from None
    finally:
        files.release()
