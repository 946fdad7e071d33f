"""A run folder (--out) is the user's disk: what makes a folder this project's, the lock that one
command holds on it, and the clean-up of the project's own temporary names. No framework here.

A folder is the project's when it holds the manifest, .vgg-run.json, which a train script or a
comparison writes when it first takes an empty (or new) folder, or, for a folder written before
the manifest existed, this project's metrics.json, checkpoint.json or report.json. A non-empty
folder that is not is refused, never cleaned; in one that is, the clean-up removes only names
that end in the project's temporary suffix (common.files.TMP), which only it makes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from .errors import RunError
from .files import temporary, write_atomic

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None

MANIFEST = ".vgg-run.json"
PROJECT = "vgg-three-ways"
LOCK = ".lock"
KINDS = {"train": "a run", "compare": "a comparison", "seeds": "a comparison over seeds"}
# The longest path a run makes below --out (a checkpoint's temp folder and a temp file in it), in bytes.
LONGEST_INSIDE = len("/.checkpoint-12345678.vgg-tmp/.model.safetensors.12345678.vgg-tmp")


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kind_of(out: Path) -> str | None:
    """'train' or 'compare' for a folder this project wrote, '' for an empty one (or one with only
    a lock file), None for anything else (a user's folder)."""
    names = {p.name for p in out.iterdir() if not temporary(p.name)}  # another process's write under way
    if names <= {LOCK}:
        return ""
    m = _json(out / MANIFEST)
    if isinstance(m, dict) and m.get("project") == PROJECT and m.get("kind") in KINDS:
        return m["kind"]
    # written before the manifest: this project's own files, by their structure
    m = _json(out / "metrics.json")
    if isinstance(m, dict) and {"framework", "config", "epochs"} <= m.keys():
        return "train"
    c = _json(out / "checkpoint.json")
    if isinstance(c, dict) and {"epoch", "folder", "framework"} <= c.keys():
        return "train"
    r = _json(out / "report.json")
    if isinstance(r, dict) and {"flags", "rows"} <= r.keys():
        return "compare"
    if isinstance(r, dict) and {"seeds", "frameworks"} <= r.keys():
        return "seeds"
    seeds = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("seed-")]
    if seeds and all(kind_of(p) == "compare" for p in seeds) and names <= {LOCK, *(p.name for p in seeds)}:
        return "seeds"  # a comparison over seeds stopped before its first report
    runs = [n for n in ("torch", "gluon", "flax") if n in names and (out / n).is_dir() and kind_of(out / n) == "train"]
    if runs and names <= {LOCK, "init.safetensors", "torch", "gluon", "flax", "report.md", "report.png"}:
        return "compare"  # a comparison stopped before its first report
    return None


def check_out(out: Path, kind: str = "train") -> None:
    """Make --out, or say in one line why it cannot hold `kind` ('train' or 'compare'), before any
    work is done: a file, a folder that cannot be made or written, a path too long for the files
    a run writes in it, or a non-empty folder that this project did not write."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder; give a folder (it is made if missing)")
    try:
        limit = os.pathconf(out if out.exists() else out.parent if out.parent.exists() else ".", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        limit = None
    if limit and len(os.fsencode(str(out))) + LONGEST_INSIDE >= limit:
        raise RunError(
            f"--out {str(out)[:60]}... is {len(os.fsencode(str(out))):,} bytes long: the files a run writes in "
            f"it would pass this file system's limit of {limit:,} bytes for a path; give a shorter --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f" at {e.filename}" if e.filename and str(e.filename) != str(out) else ""
        raise RunError(
            f"--out {out}: cannot make this folder ({e.strerror}{where}); give a folder on a disk you can write to"
        ) from None
    if hasattr(os, "statvfs") and os.statvfs(out).f_flag & os.ST_RDONLY:
        raise RunError(f"--out {out} is on a read-only file system; give a folder you can write to")
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: no permission to write in this folder; give a folder you can write to")
    found = kind_of(out)
    if found is None:
        raise RunError(
            f"--out {out} is not empty and holds no run of this project (no {MANIFEST}); nothing "
            "there is touched: give an empty or new folder"
        )
    if found and found != kind:
        raise RunError(f"--out {out} holds {KINDS[found]}, not {KINDS[kind]}; give another folder")


class FolderLock:
    """An exclusive lock on `out` for a command's whole life: flock on .lock, which holds the
    process id. The kernel releases it when the process ends, however it ends, so a killed run
    leaves no stale lock. claim() also clears what a killed run of this project left half-written
    (its temporary names), and mark() writes the manifest; call them after check_out. As a
    context manager it does both, and releases the lock at the end."""

    def __init__(self, out, kind: str = "train"):
        self.out, self.kind, self.path = Path(out), kind, Path(out) / LOCK
        self._fd = None

    def claim(self) -> None:
        if fcntl is None:
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise RunError(
                    f"--out {self.out}: cannot write there ({e.strerror}); give a folder you can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise RunError(
                    f"{self.out} is in use by another {'comparison' if self.kind == 'compare' else 'run'} "
                    f"(process {pid or 'unknown'}); wait for it to end, or give this one another --out"
                ) from None
            try:  # the one that held it may have ended and removed the file meanwhile: then lock the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        clean(self.out)

    def mark(self) -> None:
        """Write the manifest, once the command is about to write its own files there."""
        if not (self.out / MANIFEST).is_file():
            write_atomic(self.out / MANIFEST, json.dumps({"project": PROJECT, "kind": self.kind}) + "\n")

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # before closing: nobody else holds this file's lock meanwhile
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.claim()
        self.mark()
        return self

    def __exit__(self, *exc):
        self.release()


def clean(out: Path) -> None:
    """Remove the project's temporary names in `out` (a killed run's half-written files and
    checkpoint folders), and nothing else; a link is removed, never what it points to."""
    for p in Path(out).iterdir():
        if temporary(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
