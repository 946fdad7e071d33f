"""Writing files atomically, the one way every file of the project is written. No framework here.

    write_atomic(path, data)            bytes or text
    with atomic_path(path) as tmp:      for writers that want a path (safetensors' save_file,
        save_file(arrays, tmp)          matplotlib, a download)

The data goes to a hidden temp file beside the target (same folder, so same file system), named
`.<name>.<random>.vgg-tmp` (TMP: the project's own suffix, as Orbax marks its temporary checkpoint
folders, so that a clean-up can tell them from a user's files), and is renamed over it only once
complete: a reader, or a run killed half-way, sees the old file or the
new one, never half of one. The file gets the mode a plain open() would give, 0o666 less the
umask: mkstemp makes 0600 and safetensors' writer does too, which would hide exported weights
from the other users of a shared run folder while its reports stayed readable.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import RunError

TMP = ".vgg-tmp"  # the suffix of every temporary name the project makes (files and checkpoint folders)


def temporary(name: str) -> bool:
    """A name that only the project makes: hidden and ending in TMP."""
    return name.startswith(".") and name.endswith(TMP)


def umask() -> int:
    """The process's umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temp path beside `path`; on success it is renamed onto `path` with mode 0o666 & ~umask,
    on any exception (KeyboardInterrupt included) it is removed and `path` is left as it was.
    An OSError of the project's own steps names `path` (not the temp file)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP)
        os.close(fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        yield Path(tmp)
        try:
            os.chmod(tmp, 0o666 & ~umask())  # after the writer: some writers replace the file we made
            os.replace(tmp, path)
        except OSError as e:
            raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_atomic(path, data: bytes | str) -> None:
    """Write bytes (or text, as UTF-8) to `path` atomically, as atomic_path does."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        except OSError as e:  # a full disk, a file-size limit: named by the file meant, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from None


def check_writable(path, flag: str = "--out", folder_hint: str = "give a file path") -> None:
    """Make the folder of the file `path` and prove it can be written (a temp file made and removed
    there), before any work: a folder given as the file (the message then ends with folder_hint), or
    a place that cannot be written, is refused now as a RunError naming `flag`, not after minutes of
    measuring."""
    path = Path(path)
    if path.is_dir():
        raise RunError(f"{flag} {path} is a folder; {folder_hint}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".write-test.", suffix=TMP)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunError(
            f"{flag}: cannot write in {path.parent} ({e.strerror}); pick a folder you can write to"
        ) from None


def write_json(path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=1) + "\n")
