"""The training loop and its reports, shared by the three frameworks (one loop, one small backend
object per framework). No framework is imported here.

`Backend` below is the contract, in code: each framework's `vgg_X.train.Backend` owns the model,
the optimiser and the device and implements every member it declares; `run` reads nothing else.
The split follows Keras 3, which declares its trainer's methods once (keras/src/trainers/trainer.py)
and implements them per backend (keras/src/backend/{torch,jax}/trainer.py). Keras shares that
contract and the callbacks, and each backend keeps its own fit loop; here the loop itself is shared
too, so a backend is only the few calls a loop makes into a framework.

`run(config, vgg_X.train.Backend)` does the rest: data, epochs, progress bars, the d2l epoch line,
metrics.json, the PNG, checkpoints, NaN detection, --resume, the lock on --out and Ctrl-C. It
raises typed errors (RunError and its kinds below, DataError, ArchError) with the message a user
needs; only the command line (`common.cli.main_guard`) turns them into exit codes.

Reports, in --out (default runs/<framework>/):
    metrics.json    config, data set, device, versions, one entry per epoch, d2l-style points
                    within each epoch ("curve"), and every step's training loss ("step_loss", the
                    batch mean to 7 significant digits, float32's precision); rewritten after every epoch
    metrics.png     train loss, train and test accuracy against epochs, as d2l draws them
    checkpoint-epochN/ + checkpoint.json   the last finished epoch (model, optimiser, RNG),
                    and the one before it, kept as a fallback for --resume
    model.safetensors   the last epoch's weights in the neutral format (common.weights), for
                        `python -m vgg_X.evaluate --weights` in any of the three frameworks
    .lock           while a run writes there: its process id (common.runfolder.FolderLock)
    .vgg-run.json   the manifest that says the folder is this project's (common.runfolder)
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from safetensors import safe_open
from tqdm import tqdm

from .arch import VGGSpec
from .data import Loader, load_fashion_mnist
from .errors import CheckpointError, DeviceError, Diverged, Interrupted, RunError, reason
from .files import TMP, write_atomic
from .files import umask as _umask
from .recipe import describe_layers, learning_rate, start_from
from .runfolder import FolderLock, check_out
from .signals import Terminated, exit_code, finish_first

# Flags that define the run's arithmetic: --resume refuses to continue with different ones.
RESUME_KEYS = (
    "arch",
    "width_ratio",
    "scale_classifier",
    "dropout",
    "resize",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "normalize",
    "pixels",
    "init",
    "seed",
    "max_steps",
    "init_from",
    "init_partial",
    "weight_decay",
    "decay_all",
    "lr_schedule",
    "warmup_epochs",
    "lr_step_epochs",
    "lr_factor",
    "plateau_patience",
    "augment",
    "precision",
)
CURVE_POINTS = 5  # points per epoch in the plot's training curves, as d2l's animator


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training flag (common.cli.add_train_args), built once from the parsed command line:
    `TrainConfig.from_args(common.cli.parse_train_args(argv))`. No defaults here: the flags
    define them, once."""

    arch: object
    width_ratio: int
    scale_classifier: bool
    in_channels: int
    num_classes: int
    dropout: float
    preset: str | None
    resize: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    normalize: bool
    pixels: str
    init: str
    seed: int
    device: str
    devices: int | None
    data_dir: str | None
    max_steps: int | None
    out: str | None
    resume: bool
    overwrite: bool
    compile: bool
    cpu_workarounds: bool
    progress: bool | None
    init_from: str | None
    init_partial: bool
    weight_decay: float
    decay_all: bool
    lr_schedule: str
    warmup_epochs: float
    lr_step_epochs: int
    lr_factor: float
    plateau_patience: int
    augment: bool
    precision: str
    spec: VGGSpec
    """The model that the flags above describe (common.cli.model_spec), made once when they are
    parsed; vgg_X.model.build(config) builds it. Not a flag: metrics.json's "config" leaves it out."""

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def as_dict(self) -> dict:
        """metrics.json's "config": the flags, tuples as lists, as they come back from disk."""
        flags = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        return json.loads(json.dumps(flags, default=list))


@runtime_checkable
class Backend(Protocol):
    """What `run` drives, one per framework (vgg_torch.train.Backend, vgg_gluon.train.Backend,
    vgg_flax.train.Backend), built as `Backend(config)`. Batches are the loader's NumPy NCHW float32
    images and int64 labels. Data parallelism: each process builds one; only the primary prints and
    writes, each trains on part shard[0] of shard[1] of every global batch, and fetch and evaluate
    return totals over all parts."""

    framework: ClassVar[str]
    """'torch', 'gluon' or 'flax': metrics.json's "framework" and the default --out, runs/<framework>."""
    device: str
    """Where it runs, for the reports (e.g. 'cuda:0', 'cpu:0 x2 (jax.sharding mesh)')."""
    versions: dict[str, str]
    """The framework's package versions, for the reports (e.g. {'torch': '2.14.1'})."""
    parameters: int
    """The model's trainable parameter count."""
    threads: str
    """How many threads the framework computes on, and what set that, for the reports."""
    primary: bool
    """True in the one process that prints and writes the run's files (every process, on one device)."""
    shard: tuple[int, int]
    """(this process's part, parts): the loaders' shard of every global batch ((0, 1): the whole batch)."""

    def start_epoch(self, epoch: int) -> None:
        """Training mode, and dropout reseeded from (config.seed, epoch) alone (epoch_seed)."""

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next train_step (common.recipe.learning_rate)."""

    def canonical(self) -> dict[str, np.ndarray]:
        """The model's weights as canonical NumPy tensors (vgg_X.weights.to_canonical)."""

    def load_canonical(self, tensors: dict[str, np.ndarray]) -> None:
        """Set the model's weights from canonical tensors, every name and shape checked (--init-from)."""

    def train_step(self, x: np.ndarray, y: np.ndarray) -> object:
        """One update on this process's part of a batch; returns its (summed loss, #correct) unread on the device."""

    def fetch(self, out: object) -> tuple[float, int]:
        """Wait for a train_step's result: (summed loss, #correct) over every process's part."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Float32 NumPy logits of an NCHW batch in inference mode (vgg_X.train.predict; this process's rows)."""

    def total(self, *values: float) -> list[float]:
        """Each value summed over every process (itself in one): counts that each process made of its part."""

    def save_checkpoint(self, folder: Path, epoch: int) -> None:
        """Write model, optimiser and RNG state into the (empty, temporary) folder; Run renames it into place."""

    def load_checkpoint(self, folder: Path) -> int:
        """Restore what save_checkpoint wrote and return its epoch; CheckpointError if it does not fit."""

    def export(self, path: Path) -> None:
        """The weights alone as canonical safetensors (vgg_X.weights.save): model.safetensors."""


def backend_members() -> tuple[str, ...]:
    """Every member that the Backend protocol declares: its attributes, then its methods."""
    methods = [n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_")]
    return (*Backend.__annotations__, *methods)


def check_backend(backend) -> None:
    """TypeError naming what `backend` lacks of the Backend protocol (no member has a default)."""
    missing = [n for n in backend_members() if not hasattr(backend, n)]
    if missing:
        raise TypeError(f"{type(backend).__name__} is not a common.training.Backend: it lacks {', '.join(missing)}")


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
    ax.set(
        xlabel="epoch",
        xlim=(0, max(1, len(epochs))),
        title=f"{metrics['framework']}: {metrics['model']} on {metrics['device']}",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


class Run:
    """The files of one run in `out` (metrics.json, metrics.png, model.safetensors, the checkpoint,
    the lock) and how far the run got, for the message that a stop ends with. In data
    parallelism the other processes have `writes = False`: they read the run's files, never write."""

    def __init__(self, out):
        self.out = Path(out)
        self.metrics_path, self.plot_path = self.out / "metrics.json", self.out / "metrics.png"
        self.pointer = self.out / "checkpoint.json"
        self.model_path = self.out / "model.safetensors"
        self.writes = True
        self.id = uuid.uuid4().hex[:12]  # in metrics.json and checkpoint.json: which run a checkpoint belongs to
        self.saved = None  # (epoch, folder): this run's last good checkpoint
        self.metrics = None  # set once the run has started: what metrics.json says
        self.replaces = None  # --overwrite: the earlier run, kept as it was until this run's first checkpoint
        self.where = "start-up"
        self.lock = FolderLock(self.out, "train")

    # -- the lock
    def claim(self) -> None:
        """The lock on `out` for the run's whole life (FolderLock), then the clean-up of what a
        killed run of this project left half-written there. Only the process that writes."""
        if self.writes and self.lock._fd is None:
            self.lock.claim()

    def release(self) -> None:
        self.lock.release()

    # -- what is already there
    def check_fresh(self, overwrite: bool):
        """A run without --resume must not silently replace another run's checkpoint: refuse,
        unless --overwrite. Returns what is there (or None)."""
        held = self._holds()
        if held and not overwrite:
            raise RunError(
                f"{self.out} already holds a run ({held}); --resume continues it, --out NEW starts "
                "elsewhere, --overwrite replaces it"
            )
        return held

    def _holds(self):
        try:
            return f"a checkpoint of epoch {json.loads(self.pointer.read_text())['epoch']}"
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError):
            return "a damaged checkpoint.json"
        if any(self.out.glob("checkpoint-epoch*")):
            return "checkpoint folders"
        return "trained weights, model.safetensors" if self.model_path.exists() else None

    def checkpoints(self):
        """(the checkpoints --resume may continue from, best first; a problem to report or None;
        the run they belong to or None): the one checkpoint.json points to, then the one before
        it. Without a readable checkpoint.json, every checkpoint-epochN folder, newest first."""
        try:
            p = json.loads(self.pointer.read_text())
            found = [(p["epoch"], self.out / p["folder"])]
            if p.get("previous"):
                found.append((p["previous"]["epoch"], self.out / p["previous"]["folder"]))
            return found, None, p.get("run")
        except FileNotFoundError:
            problem = None
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = f"{self.pointer.name} is damaged ({reason(e)})"
        found = []
        for folder in self.out.glob("checkpoint-epoch*"):
            if folder.name[16:].isdigit():
                found.append((int(folder.name[16:]), folder))
        return sorted(found, reverse=True), problem, None

    def restore(self, backend: Backend, candidates, say) -> int:
        """Load the first checkpoint of `candidates` that loads; says which when it is not the first."""
        problems = []
        for _, folder in candidates:
            try:
                if not folder.is_dir():
                    raise FileNotFoundError(f"no folder {folder.name}")
                check_stored_floats(folder)
                epoch = backend.load_checkpoint(folder)
                check_finite(backend.canonical(), folder)
            except Exception as e:  # each framework's own error for a missing or damaged file
                problem = str(e).replace(f"{folder}{os.sep}", "") if isinstance(e, CheckpointError) else reason(e)
                problems.append(f"{folder.name}: {problem}")  # each file named once, inside its folder
                continue
            if problems:
                say(
                    f"warning: {'; '.join(problems)}; resuming from {folder.name} (epoch {epoch}), the one before",
                    file=sys.stderr,
                )
            self.saved = (epoch, folder)
            return epoch
        raise CheckpointError(
            f"--resume: the checkpoint in {self.out} cannot be read ({'; '.join(problems)}); "
            "resume only from checkpoints you wrote: --overwrite starts afresh there, another --out elsewhere"
        )

    # -- writing
    def save_checkpoint(self, backend: Backend, epoch: int) -> None:
        """Written into a temp folder, renamed into place, then checkpoint.json (written atomically)
        is switched to it, then folders other than it and the one before it go. A kill at any
        moment leaves checkpoint.json pointing at a whole checkpoint: a folder is pointed to only
        once it is renamed into place, and renamed only once it is whole. The next run's claim
        removes a killed run's temp folder (its name ends in common.files.TMP)."""
        if not self.writes:
            return
        final = self.out / f"checkpoint-epoch{epoch}"
        try:
            tmp = Path(tempfile.mkdtemp(dir=self.out, prefix=".checkpoint-", suffix=TMP))
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(final)) from None
        try:
            backend.save_checkpoint(tmp, epoch)
            for f in tmp.iterdir():  # safetensors writes 0600 files; the folder's rename is what makes it atomic
                os.chmod(f, 0o666 & ~_umask())
            os.chmod(tmp, 0o777 & ~_umask())
            shutil.rmtree(final, ignore_errors=True)  # not pointed to by this run: a killed try's, or --overwrite's
            os.replace(tmp, final)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(final)) from None
        except Exception as e:  # a framework's own error for a failed write (torch.save's RuntimeError, ...)
            raise OSError(errno.EIO, reason(e), str(final)) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        pointer = {"epoch": epoch, "folder": final.name, "framework": backend.framework, "run": self.id}
        keep = {final}
        if self.saved and self.saved[1] != final and self.saved[1].is_dir():
            pointer["previous"] = {"epoch": self.saved[0], "folder": self.saved[1].name}
            keep.add(self.saved[1])
        write_json(self.pointer, pointer)
        self.saved, self.replaces = (epoch, final), None
        for old in self.out.glob("checkpoint-epoch*"):
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def export(self, backend: Backend) -> None:
        """The weights alone, in the neutral format that every framework's evaluate reads."""
        if self.writes:
            try:
                backend.export(self.model_path)
            except OSError:
                raise
            except Exception as e:  # safetensors' own error for a failed write
                raise OSError(errno.EIO, reason(e), str(self.model_path)) from None

    def write(self, metrics: dict) -> None:
        if not self.writes:
            return
        write_json(self.metrics_path, metrics)
        if metrics["epochs"] or metrics["curve"]:
            save_plot(self.plot_path, metrics)

    # -- how it ended
    def kept(self) -> str:
        if self.replaces:
            return f"the earlier run in {self.out} is kept as it was ({self.replaces}); --resume continues it"
        if self.saved:
            return f"the last checkpoint (epoch {self.saved[0]}) is intact; --resume continues from it"
        return "no checkpoint was written; run the same command again to start afresh"

    def ended(self, status: str, message: str) -> bool:
        """metrics.json says how the run ended, once it had started and where it still can be written
        (never over an earlier run that --overwrite has not replaced yet); False where it could not."""
        if self.metrics is None or self.replaces:
            return True
        self.metrics.update(status=status, message=message)
        try:
            self.write(self.metrics)
        except OSError:
            return False
        return True

    def interrupted(self, where: str, signal_name: str = "interrupted", code: int = 130) -> Interrupted:
        """After Ctrl-C or SIGTERM: metrics.json says so (once the run had started); the error says where it stopped."""
        where = where or self.where
        self.ended("interrupted", f"{signal_name} during {where}")
        return Interrupted(f"{signal_name} during {where}; {self.kept()}", code=code)

    def failed(self, e: OSError) -> RunError:
        """A file of the run could not be written (a full disk, --out removed, ...): one line naming
        the file and the cause; metrics.json marked failed where it can still be written."""
        cause = e.strerror or reason(e)
        if e.errno == errno.ENOENT and not self.out.is_dir():
            cause += f" ({self.out} was removed while the run wrote there)"
        message = f"cannot write {e.filename or self.out} during {self.where}: {cause}"
        marked = self.ended("failed", message)
        note = "" if marked else " (metrics.json could not be marked failed either)"
        return RunError(f"{message}{note}; {self.kept()}")


WEIGHT_NAMES = {"weight", "bias", "kernel", "scale", "mean", "var", "running_mean", "running_var"}


def check_stored_floats(folder: Path) -> None:
    """CheckpointError naming a weight tensor that a checkpoint's safetensors files store as integers
    (a framework would convert it on loading without a word). Other files: their framework's check."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="np") as f:
                stored = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        except Exception:  # a damaged file: the framework's loader names the problem
            continue
        for name, dtype in stored.items():
            if name.replace("/", ".").rsplit(".", 1)[-1] in WEIGHT_NAMES and dtype not in ("F32", "F16", "BF16", "F64"):
                raise CheckpointError(f"{path.name}: {name} stores {dtype} values; weights are floating point")


def check_finite(tensors: dict, folder: Path) -> None:
    """CheckpointError naming the first weight tensor of a loaded checkpoint that holds NaN or infinity
    (a run saved after it diverged, or a damaged file): --resume then tries the checkpoint before."""
    for name, x in tensors.items():
        bad = np.size(x) - int(np.isfinite(x).sum())
        if bad:
            raise CheckpointError(f"{name} holds {bad:,} NaN or infinite values (of {np.size(x):,}) in {folder.name}")


def _default_config() -> dict:
    """Every flag at its default, as metrics.json's "config" holds them."""
    from .cli import parse_train_args  # the flags' one definition; imported here, cli imports this module's users

    return TrainConfig.from_args(parse_train_args([])).as_dict()


def _resume(files: Run, config: TrainConfig, framework: str):
    """(earlier metrics, checkpoints to try, a problem to report) from --out, after checking that
    the checkpoint is this run's and the flags match. Reads only."""
    candidates, problem, run_id = files.checkpoints()
    if not candidates:
        raise CheckpointError(
            f"--resume: no checkpoint in {files.out}{f' ({problem})' if problem else ''}; "
            "run without --resume to start, or point --out at an earlier run"
        )
    try:
        old = json.loads(files.metrics_path.read_text())
        old_config = old["config"]
        if not isinstance(old_config, dict) or not all(
            isinstance(old.get(k, []), list) for k in ("epochs", "curve", "step_loss")
        ):
            raise TypeError("not the structure this project writes")
    except FileNotFoundError:
        raise CheckpointError(
            f"--resume: {files.out} has a checkpoint but no metrics.json, so its flags are "
            "unknown; --overwrite starts afresh there, --out NEW elsewhere"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"--resume: {files.metrics_path} is damaged ({reason(e)}), so the checkpoint cannot "
            "be matched to its flags; --overwrite starts afresh there, --out NEW elsewhere"
        ) from None
    if old.get("framework") != framework:
        raise CheckpointError(
            f"--resume: {files.out} holds a {old.get('framework')} run, not {framework}; use another --out"
        )
    if run_id and old.get("run") and run_id != old["run"]:
        raise CheckpointError(
            f"--resume: the checkpoint in {files.out} belongs to an earlier run than its "
            "metrics.json (a run started there with --overwrite stopped before its first "
            "checkpoint); --overwrite starts afresh there, --out NEW elsewhere"
        )
    new = config.as_dict()
    was = {**_default_config(), **old_config}  # a run from before a flag existed ran at its default
    changed = [f"--{k.replace('_', '-')} {was.get(k)} -> {new[k]}" for k in RESUME_KEYS if was.get(k) != new[k]]
    if changed:
        raise CheckpointError(
            f"--resume: flags differ from the run in {files.out} ({'; '.join(changed)}); "
            "give the same flags, or start a new run in another --out"
        )
    if config.lr_schedule == "cosine" and old_config.get("epochs") != config.epochs:
        raise CheckpointError(
            f"--resume: --lr-schedule cosine spans the whole run, which had --epochs {old_config.get('epochs')}; "
            "resume with that, or start a new run in another --out"
        )
    return old, candidates, problem


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
    """Everything before the first step: --out, the checks of --resume or of a fresh run, the data,
    the backend, the lock, the checkpoint, the header lines and the loaders."""
    framework = make_backend.framework
    check_out(files.out, "train")
    if not launched():  # one process: the lock first, before the slow part (several: the primary, below)
        files.claim()
    if config.resume:  # read-only checks first, to fail before the slow part; repeated under the lock below
        _resume(files, config, framework)
    else:
        files.check_fresh(config.overwrite)
    files.where = "start-up (reading the data)"
    data = load_fashion_mnist(config.data_dir, progress=config.progress is not False)
    if len(data.train_images) < config.batch_size:
        raise RunError(
            f"--batch-size {config.batch_size} is larger than the training set ({len(data.train_images):,} images)"
        )
    files.where = "start-up (building the model)"
    backend = make_backend(config)
    check_backend(backend)
    files.writes = backend.primary  # data parallel: the first process prints and writes for all
    say = print if files.writes else (lambda *a, **k: None)
    files.claim()
    if files.writes:
        files.lock.mark()  # the folder is this project's from now on
    old, held = None, None
    if config.resume:
        old, candidates, problem = _resume(files, config, framework)
        files.saved, files.id = candidates[0], old.get("run") or files.id
        if problem:
            say(f"warning: {problem}; looking for the newest checkpoint folder that loads", file=sys.stderr)
    else:
        held = files.replaces = files.check_fresh(config.overwrite)
    spec = config.spec
    metrics = old or {}
    metrics.update(
        framework=framework,
        versions={**backend.versions, "python": platform.python_version(), "numpy": np.__version__},
        model=spec.name,
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
    files.metrics = metrics  # the run has started: an interrupt from here on is recorded in metrics.json
    say(
        f"{framework} ({', '.join(f'{k} {v}' for k, v in backend.versions.items())}): {spec.name} at "
        f"{config.resize} px, {backend.parameters:,} parameters, on {backend.device}"
        f"{' (--device auto)' if config.device == 'auto' else ''} ({backend.threads})"
    )
    say(data.describe())
    if held:
        say(
            f"note: --overwrite: {files.out} holds an earlier run ({held}); it is kept as it was until this "
            "run's first checkpoint replaces it"
        )
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

    shard = backend.shard  # data parallel: this process's part of each global batch
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
    test = Loader(
        data.test_images,
        data.test_labels,
        batch_size=config.batch_size,
        resize=config.resize,
        normalize=config.normalize,
        pixels=config.pixels,
        shuffle=False,
        shard=shard,
    )
    steps = min(len(train), config.max_steps or len(train))
    metrics["steps_per_epoch"] = steps
    progress = (sys.stderr.isatty() if config.progress is None else config.progress) and files.writes
    return _Started(backend, files, metrics, say, train, test, first, steps, progress)


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
