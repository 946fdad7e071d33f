"""Every typed error of the project, in one place: library code raises them with the message a
user needs, and only the command line (common.cli.main_guard) turns them into one `error: ...`
line and the exit code they carry (2 unless said otherwise). Import them from here."""


class ProjectError(Exception):
    """An expected failure: the message says what went wrong and what to do; `code` is the exit
    code the command line ends with (a class's own, or one given for this error)."""

    code = 2

    def __init__(self, message: str = "", code: int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UsageError(ProjectError):
    """Flags or arguments that cannot work together, found before any work is done."""


class ArchError(ProjectError, ValueError):
    """A configuration that cannot be built; the message says what is accepted."""


class DataError(ProjectError):
    """An expected failure (missing, corrupt or undownloadable data); the message says what to do."""


class WeightsError(ProjectError, ValueError):
    """Weights that do not fit, or a file that is not ours; the message says what and where."""


class RunError(ProjectError):
    """An expected failure of a run (or of a comparison of runs)."""


class CheckpointError(RunError):
    """A checkpoint that is missing, damaged, not this run's, or not written by this project at all
    (each framework's train.load_checkpoint raises it for a foreign file); the message names the file."""


class DeviceError(RunError):
    """A device that was asked for and is not there."""


class Diverged(RunError):
    """The loss became NaN or infinite."""

    code = 1


class Interrupted(RunError):
    """Ctrl-C (SIGINT, exit code 130) or SIGTERM (143); the message says where the run stopped and what is kept."""

    code = 130


def reason(e: BaseException) -> str:
    """An exception as a short parenthesis for a one-line message: its type and its first line."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback"):  # MXNet's C++ errors carry their own stack: keep its last line
        lines = [lines[-1].split(": ", 1)[-1]]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else lines[0] if lines else ""
    # a library's advice to flip one of its flags (allow_missing=True, ...) is not ours to give
    text = ". ".join(s for s in text.split(". ") if "=True" not in s and "=False" not in s)
    return f"{type(e).__name__}: {text[:200]}{'...' * (len(text) > 200)}" if text else type(e).__name__
