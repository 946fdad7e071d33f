"""How a command stops. No framework here.

Ctrl-C (SIGINT) raises KeyboardInterrupt and SIGTERM raises `Terminated`, a KeyboardInterrupt of
its own, so that the one path that stops a run cleanly (metrics.json says "interrupted", the last
checkpoint is kept) serves both; the command then exits 130 or 143, as a shell reports a process
that such a signal ended.

    guard_start()     a package's __init__ calls it when a command starts (python -m ...): a signal
                      while the frameworks are still being imported ends the process in one line
    handled()         main_guard's: SIGINT and SIGTERM raise for the command's whole life
    finish_first()    around a checkpoint's write: the signal waits until the block is done
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt is: the same clean stop, exit code 143."""


CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def exit_code(e: BaseException) -> int:
    return CODES[signal.SIGTERM] if isinstance(e, Terminated) else CODES[signal.SIGINT]


def what(e: BaseException) -> str:
    """'interrupted' (Ctrl-C) or 'terminated (SIGTERM)'."""
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"


def _raise(signum, frame):
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _stop_at_start(signum, frame):
    os.write(2, b"error: interrupted during start-up (importing the frameworks); nothing was written\n")
    os._exit(CODES.get(signum, 130))


def guard_start() -> None:
    """For the first seconds of a command, while the frameworks are imported, before main_guard:
    SIGINT or SIGTERM print one line and end the process (nothing has been written yet). Only
    where the command's `python -m` is starting (sys.argv[0] is '-m' while the packages of the
    module are imported), and only over Python's defaults: a library import changes nothing."""
    if sys.argv[:1] != ["-m"] or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_at_start)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _stop_at_start)


@contextlib.contextmanager
def handled():
    """For the block: SIGINT raises KeyboardInterrupt and SIGTERM Terminated, where they had Python's
    default or guard_start's handler (a handler of the caller's, or a signal ignored, as a
    background job's SIGINT is, stays as it was); SIGXFSZ is ignored, so that a file-size limit
    ends a write with an error (EFBIG) instead of killing the process. Restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {
        signal.SIGINT: (signal.default_int_handler, _stop_at_start),
        signal.SIGTERM: (signal.SIG_DFL, _stop_at_start),
        signal.SIGXFSZ: (signal.SIG_DFL,),
    }
    old = {s: signal.getsignal(s) for s in defaults}
    for s, ours in defaults.items():
        if old[s] in ours:
            signal.signal(s, signal.SIG_IGN if s == signal.SIGXFSZ else _raise)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def raising() -> list[int]:
    """The signals whose handler raises (handled()'s, or Python's default for SIGINT) in this thread."""
    if threading.current_thread() is not threading.main_thread():
        return []
    return [s for s in CODES if signal.getsignal(s) in (_raise, signal.default_int_handler)]


@contextlib.contextmanager
def finish_first():
    """SIGINT and SIGTERM wait until the block is done (a second one does not). Around the
    checkpoint write, so that an epoch that has finished is kept; a kill at any moment is safe as
    well (Run.save_checkpoint). Signals that do not raise here are not ours to change."""
    ours = raising()
    if not ours:
        yield
        return
    hits = []

    def later(signum, frame):
        hits.append(signum)
        if len(hits) > 1:
            _raise(hits[0], frame)

    with _handling(ours, later):
        yield
    if hits:
        _raise(hits[0], None)


@contextlib.contextmanager
def _handling(signums: list[int], handler):
    """For the block, `handler` handles `signums`; their earlier handlers come back after it."""
    old = {s: signal.getsignal(s) for s in signums}
    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def passed_on(processes, got: list):
    """For the block: SIGINT and SIGTERM are sent on, once each time, to every process in the
    collection `processes` (a parent's running children, each in its own process group, so that a
    terminal's Ctrl-C reaches them only this way), and appended to `got`; the parent keeps waiting
    for its children, which stop as they do on that signal."""
    ours = raising()

    def send(signum, frame):
        got.append(signum)
        for p in list(processes):
            with contextlib.suppress(OSError):
                p.send_signal(signum)

    with _handling(ours, send):
        yield


def stopped(signum: int) -> KeyboardInterrupt:
    """The exception the signal `signum` raises under handled()."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
