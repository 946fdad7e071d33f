"""The files of one run in --out, as `Run` writes and reads them: the reports, the checkpoints and
their rotation, the checks before --resume continues a run, and how a run that stops says so in
metrics.json. The lock, the manifest and the clean-up are common.runfolder's. No framework is
imported here.

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

import errno
import io
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .contract import RESUME_KEYS, Backend, TrainConfig, default_config
from .errors import CheckpointError, Interrupted, RunError, reason
from .files import TMP, write_atomic, write_json
from .files import umask as _umask
from .runfolder import FolderLock


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
        held = self.holds()
        if held and not overwrite:
            raise RunError(
                f"{self.out} already holds a run ({held}); --resume continues it, --out NEW starts "
                "elsewhere, --overwrite replaces it"
            )
        return held

    def holds(self) -> str | None:
        """What of a run this folder holds, in words (a checkpoint, checkpoint folders, trained
        weights), or None."""
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


def check_resume(files: Run, config: TrainConfig, framework: str):
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
    was = {**default_config(), **old_config}  # a run from before a flag existed ran at its default
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
