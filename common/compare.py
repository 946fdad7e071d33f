"""`python -m common.compare [training flags]`: train the three frameworks on one configuration,
one after another, and write one report.

Each framework runs in its own process (`python -m vgg_X.train`, which imports only its own
framework), in turn rather than at once, so that none competes with another for the cores and
the examples/s are comparable. Each gets the same resolved flags and writes into <out>/<framework>/;
then this writes <out>/report.md, report.json and report.png (the three frameworks' curves).
A framework that fails is reported as failed, with its last error line; the others' results stay.

The same start (the default; --no-same-init turns it off): one set of initial weights is drawn
once, from --seed and --init, by PyTorch (`python -m vgg_torch.weights --draw <out>/init.safetensors`),
and every framework starts from it (--init-from; a file given with --init-from is used instead).
Any of the three could draw it (the canonical format reads into each); PyTorch does because the
canonical layout is its own (the file is its state_dict as is, nothing transposed) and the other
two frameworks' initialisers are written to match its distributions. Then the three differ only
by their arithmetic: the report's third panel shows the largest difference between two
frameworks' training loss at each step.

It holds a lock on --out for its whole life (a second comparison there is refused at once), and
refuses a folder whose <framework>/ holds an earlier run unless --overwrite or --resume says what
to do with it. Ctrl-C or SIGTERM is passed on to the running child, which stops as a train script
does (its last checkpoint kept); the report is then written with the rows that finished and the
interrupted one marked, and no child outlives this process.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import PACKAGES, signals
from .cli import main_guard, parse_train_args, seed_arg
from .errors import Interrupted, RunError, UsageError
from .files import write_atomic, write_json
from .runfiles import Run
from .runfolder import FolderLock, check_out

FRAMEWORKS = {package.removeprefix("vgg_"): f"{package}.train" for package in PACKAGES}  # name -> train command
# handled here, or already resolved
NOT_PASSED = {
    "help",
    "preset",
    "out",
    "frameworks",
    "progress",
    "overwrite",
    "same_init",
    "concurrently",
    "rewrite_report",
    "seeds",
    "resume",
}
DRAWS = "torch"  # --same-init: the framework that draws the initial weights (see the docstring)


def child_argv(args, parser: argparse.ArgumentParser) -> list[str]:
    """The resolved flags as a command line: every framework trains the same configuration, and
    a preset's values are spelled out."""
    argv = []
    for a in parser._actions:
        if not a.option_strings or a.dest in NOT_PASSED:
            continue
        v, flag = getattr(args, a.dest), next(s for s in a.option_strings if s.startswith("--"))
        if isinstance(a, argparse.BooleanOptionalAction):
            argv += [] if v is None else [flag if v else "--no-" + flag[2:]]
        elif a.nargs == 0:  # store_true, or store_false (--no-cpu-workarounds): the flag when v is not its default
            argv += [flag] if v != a.default else []
        elif v is not None:
            argv.append(f"{flag}={v}")  # '=' keeps values such as '((1, 64), ...)' one argument
    return argv


# ---------------------------------------------------------------------------- the children

RUNNING: set[subprocess.Popen] = set()  # the children now running: a signal is passed on to them
STOPPED: list[int] = []  # the signals this comparison received (signals.passed_on records them)
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
except (OSError, AttributeError):  # not Linux: a child may then outlive a killed parent
    _prctl = None
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int):
    """In the child, before it runs: SIGTERM when this process ends, however it ends (SIGKILL too)."""

    def setup():
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the parent died before the call
                os._exit(143)

    return setup


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """A child in its own process group (a terminal's Ctrl-C reaches only this process, which passes
    it on once), ended with SIGTERM if this process dies, and known to RUNNING while it runs."""
    proc = subprocess.Popen(cmd, process_group=0, preexec_fn=_die_with_parent(os.getpid()), **kw)
    RUNNING.add(proc)
    if STOPPED:  # a signal came while it started
        proc.send_signal(STOPPED[0])
    return proc


def finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait()
    finally:
        RUNNING.discard(proc)


def run_one(framework: str, argv: list[str], out: Path) -> dict:
    """Train one framework in a subprocess; its stdout and stderr pass through to ours, and the
    tail of stderr is kept for the report in case it fails."""
    cmd = [sys.executable, "-m", FRAMEWORKS[framework], *argv, f"--out={out}"]
    print(f"\n=== {framework}: {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    proc = spawn(cmd, stderr=subprocess.PIPE)
    tail = b""
    while chunk := os.read(proc.stderr.fileno(), 4096):
        sys.stderr.buffer.write(chunk)
        sys.stderr.flush()
        tail = (tail + chunk)[-4000:]
    code, seconds = finish(proc), time.time() - start
    stopped = code in signals.CODES.values() or -code in signals.CODES
    row = {
        "framework": framework,
        "status": "finished" if code == 0 else f"interrupted (exit {code})" if stopped else f"failed (exit {code})",
        "seconds": seconds,
        "command": " ".join(cmd[1:]),
    }
    metrics_path = out / "metrics.json"
    m = _metrics(metrics_path) if metrics_path.is_file() and metrics_path.stat().st_mtime >= start else None
    if m:  # never a stale file from an earlier run
        row.update(parameters=m["parameters"], device=m["device"], data=m["data"]["describe"], versions=m["versions"])
        row.update(results(m))
        if m["status"] not in ("finished",) and code == 0:
            row["status"] = m["status"]
    if code != 0:
        lines = [line for line in tail.decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
        row["error"] = lines[-1] if lines else "no message"
    return row


def results(m: dict) -> dict:
    """What a report row takes from a run's metrics.json: the curves, and after a finished epoch the
    last epoch's accuracies and loss and the examples/s over the whole run (total examples / total
    training seconds)."""
    epochs = m["epochs"]
    row = dict(
        epochs=epochs, curve=m["curve"], step_loss=m.get("step_loss", []), steps_per_epoch=m.get("steps_per_epoch")
    )
    if epochs:
        row.update(
            examples_per_sec=sum(e["examples"] for e in epochs)
            / sum(e["examples"] / e["examples_per_sec"] for e in epochs),
            train_acc=epochs[-1]["train_acc"],
            test_acc=epochs[-1]["test_acc"],
            loss=epochs[-1]["loss"],
        )
    return row


def _metrics(path: Path) -> dict | None:
    """A run's metrics.json, or None where it is unreadable or not of the structure the train scripts write."""
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    keys = {"epochs": list, "curve": list, "status": str}
    ok = isinstance(m, dict) and all(isinstance(m.get(k), t) for k, t in keys.items())
    ok = ok and all(
        isinstance(e, dict) and {"examples", "examples_per_sec", "test_acc"} <= e.keys() for e in m["epochs"]
    )
    return m if ok else None


def table(rows: list[dict]) -> str:
    """A Markdown table: readable printed as is."""
    head = ["framework", "parameters", "examples/s", "train acc", "test acc", "loss", "device", "seconds", "status"]
    fmt = lambda r, k, f: f.format(r[k]) if r.get(k) is not None else "-"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["framework"],
            fmt(r, "parameters", "{:,}"),
            fmt(r, "examples_per_sec", "{:.1f}"),
            fmt(r, "train_acc", "{:.3f}"),
            fmt(r, "test_acc", "{:.3f}"),
            fmt(r, "loss", "{:.3f}"),
            r.get("device", "-"),
            f"{r['seconds']:.0f}",
            r["status"] + (f": {r['error']}" if r.get("error") else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
    """framework, epochs, minutes (the whole process), final and best test accuracy: a long run's summary."""
    lines = ["| framework | epochs | minutes | final test acc | best test acc (epoch) |", "|---|---|---|---|---|"]
    for r in rows:
        e = r.get("epochs") or []
        best = max(e, key=lambda x: x["test_acc"]) if e else None
        lines.append(
            f"| {r['framework']} | {len(e)} | {r['seconds'] / 60:.0f} | "
            + (f"{e[-1]['test_acc']:.4f} | {best['test_acc']:.4f} ({best['epoch']}) |" if e else "- | - |")
        )
    return "\n".join(lines)


def step_loss_gap(rows: list[dict]):
    """The largest difference between two frameworks' training loss at each step, over the steps that
    all the rows with per-step losses have (a NumPy array; empty with fewer than two such rows).
    The check that frameworks starting from the same weights train alike (tests/test_recipe.py)."""
    import numpy as np

    losses = [r["step_loss"] for r in rows if r.get("step_loss")]
    if len(losses) < 2:
        return np.zeros(0)
    n = min(len(x) for x in losses)
    a = np.array([x[:n] for x in losses], dtype=np.float64)
    return a.max(axis=0) - a.min(axis=0)


def save_plot(path, rows: list[dict]) -> None:
    """Left: training loss at every step (d2l's averaged points where a run has no per-step losses);
    middle: train (dashed) and test (dots) accuracy, one colour per framework; right: the largest
    difference between two frameworks' training loss at each step (log scale)."""
    import io

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: slow, and only the plot needs it
    from matplotlib.figure import Figure

    gap = step_loss_gap(rows)
    fig = Figure(figsize=(15 if len(gap) else 10, 3.8))
    FigureCanvasAgg(fig)
    loss_ax, acc_ax, *gap_ax = fig.subplots(1, 3 if len(gap) else 2)
    for r, colour, style in zip(rows, ("C0", "C1", "C2", "C3"), ("-", "--", ":", "-.")):
        if not r.get("curve"):
            continue
        x = [p["epoch"] for p in r["curve"]]
        if r.get("step_loss"):  # every step, thin lines in different dashes: identical curves stay visible
            n = len(r["step_loss"])
            loss_ax.plot(
                [(k + 1) / r["steps_per_epoch"] for k in range(n)],
                r["step_loss"],
                style,
                color=colour,
                lw=0.8,
                label=r["framework"],
            )
        else:
            loss_ax.plot(x, [p["loss"] for p in r["curve"]], "-", color=colour, label=r["framework"])
        acc_ax.plot(x, [p["train_acc"] for p in r["curve"]], "--", color=colour, label=f"{r['framework']} train")
        acc_ax.plot(
            [e["epoch"] for e in r["epochs"]],
            [e["test_acc"] for e in r["epochs"]],
            "o-.",
            color=colour,
            label=f"{r['framework']} test",
        )
    loss_ax.set(xlabel="epoch", ylabel="training loss", title="loss at each step")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    if gap_ax:
        first = next(r for r in rows if r.get("step_loss"))
        # metrics.json keeps 7 significant digits: below this the losses read as equal (drawn at half of it)
        digit = 10.0 ** (np.floor(np.log10(np.median(first["step_loss"]))) - 6)
        x = [(k + 1) / first["steps_per_epoch"] for k in range(len(gap))]
        gap_ax[0].semilogy(x, np.maximum(gap, digit / 2), "k-", lw=0.8)
        gap_ax[0].axhline(digit, color="grey", ls=":", lw=1, label="last digit kept (7 significant)")
        gap_ax[0].set(
            xlabel="epoch", ylabel="largest |loss difference|", title="largest difference between two frameworks"
        )
        gap_ax[0].grid(alpha=0.3, which="both")
        gap_ax[0].legend(fontsize=8)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def reread(out: Path, frameworks: list[str]):
    """(rows, flags, init) of an earlier report in `out`, with each framework's metrics.json read again."""
    if not (out / "report.json").is_file():
        raise RunError(f"--rewrite-report: no report.json in {out}; run the comparison first")
    try:
        report = json.loads((out / "report.json").read_text())
        ok = isinstance(report, dict) and isinstance(report.get("flags"), list) and isinstance(report.get("rows"), list)
        ok = ok and all(isinstance(r, dict) and isinstance(r.get("framework"), str) for r in report["rows"])
    except (OSError, ValueError) as e:
        ok, report = False, e
    if not ok:
        raise RunError(
            f"--rewrite-report: {out / 'report.json'} is damaged or not a report this command wrote"
            f"{f' ({report})' if isinstance(report, Exception) else ''}; run the comparison again"
        )
    rows = []
    for old in report["rows"]:
        if old["framework"] not in frameworks:
            continue
        row, path = dict(old), out / old["framework"] / "metrics.json"
        m = _metrics(path) if path.is_file() else None
        if path.is_file() and m is None:
            raise RunError(f"--rewrite-report: {path} is damaged or not a run's metrics.json; it cannot be reported")
        if m:
            row.update(results(m), status=m["status"])
        rows.append(row)
    return rows, report["flags"], report.get("init", "unknown")


def write_report(out: Path, rows: list[dict], argv_child: list[str], init: str, same_init: bool) -> None:
    """report.md, report.json and report.png in `out`, and the table on stdout."""
    config = " ".join(argv_child)
    data = next((r["data"] for r in rows if r.get("data")), "unknown")
    gap = step_loss_gap(rows)
    gap_line = (
        f"largest difference between two frameworks' training loss: {gap[0]:.2g} at the first step, "
        f"{gap[:20].max():.2g} over the first 20, {gap.max():.2g} over all {len(gap)} steps"
        if len(gap)
        else ""
    )
    text = (
        f"# VGG on Fashion-MNIST, three frameworks\n\nflags: `{config}`\n\ndata: {data}\n\n"
        f"initial weights: {init}\n\n{table(rows)}\n\n"
        + (gap_line + "\n\n" if gap_line else "")
        + "examples/s: training examples per second over all epochs, first step of each epoch excluded "
        "(compilation); seconds: the whole process, start-up, evaluation and checkpoints included.\n\n"
        f"{accuracy_table(rows)}\n\n![curves](report.png)\n"
    )
    write_atomic(out / "report.md", text)
    write_json(
        out / "report.json",
        {
            "flags": argv_child,
            "data": data,
            "init": init,
            "same_init": same_init,
            "step_loss_gap": {
                "first": float(gap[0]),
                "first_20": float(gap[:20].max()),
                "all": float(gap.max()),
                "steps": len(gap),
            }
            if len(gap)
            else None,
            "rows": [{k: v for k, v in r.items() if k not in ("curve", "step_loss")} for r in rows],
        },
    )
    save_plot(out / "report.png", rows)
    print("\n" + table(rows))
    print(f"\ninitial weights: {init}" + (f"\n{gap_line}" if gap_line else ""))
    print(f"\ndata: {data}\nwrote {out / 'report.md'}, {out / 'report.json'} and {out / 'report.png'}")


def parse_args(argv=None) -> argparse.Namespace:
    """The training flags and the comparison's own; args.frameworks becomes a checked list."""

    def extra(p):
        p.add_argument(
            "--frameworks",
            default=",".join(FRAMEWORKS),
            help="comma-separated subset of torch, gluon, flax (default: all three, in that order)",
        )
        p.add_argument(
            "--same-init",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="draw the initial weights once (PyTorch, from --seed and --init), write them to "
            "<out>/init.safetensors and start every framework from them (--init-from), so that "
            "the three differ only by their arithmetic (default; with --init-from FILE, that file is "
            "the common start). --no-same-init: each framework draws its own with its own generator",
        )
        p.add_argument(
            "--concurrently",
            action="store_true",
            help="train the frameworks at the same time, each in its own process, instead of one after "
            "another: sooner done for long runs on a machine with cores to spare, but they then "
            "compete for the cores and their examples/s do not compare",
        )
        p.add_argument(
            "--rewrite-report",
            action="store_true",
            help="train nothing: write report.md, report.json and report.png in --out again from the "
            "runs there (their metrics.json and the earlier report.json), e.g. after a long run "
            "that was resumed by hand",
        )
        p.add_argument(
            "--seeds",
            type=seed_arg,  # each checked as --seed is, before the first seed trains
            nargs="+",
            metavar="S",
            help="repeat the comparison for each seed (instead of --seed), each into <out>/seed-S/ "
            "(default --out runs/compare-seeds), then "
            "write <out>/report.md, .json and .png over the seeds: means with 95%% intervals and the "
            "differences between frameworks paired by seed (common/seeds.py). Run again, it keeps the "
            "seeds that finished with the same flags and runs the rest (with --resume the interrupted "
            "one continues from its checkpoints where every framework has one); with --rewrite-report "
            "it only writes the report",
        )

    args = parse_train_args(
        argv,
        prog="python -m common.compare",
        extra=extra,
        description=__doc__.strip().splitlines()[0].split(": ", 1)[1],
    )
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        raise UsageError(
            f"--frameworks: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(FRAMEWORKS)}"
        )
    twice = sorted({f for f in frameworks if frameworks.count(f) > 1})
    if twice:
        raise UsageError(
            f"--frameworks names {', '.join(twice)} twice; each framework trains once, into <out>/<framework>"
        )
    args.frameworks = frameworks
    return args


def held_runs(args, out: Path) -> dict[str, str]:
    """{framework: what its <out>/<framework>/ holds} for the frameworks whose folder holds a run;
    refused up front: a user's folder there, an earlier run without --overwrite or --resume, and
    --resume with nothing to continue."""
    held = {}
    for f in args.frameworks:
        if (out / f).exists():
            check_out(out / f, "train")
            if what := Run(out / f).holds():
                held[f] = what
    if args.resume and not held:
        raise UsageError(f"--resume: {out} holds no run to continue; leave --resume out to start one")
    if held and not (args.resume or args.overwrite):
        f, what = next(iter(held.items()))
        raise RunError(
            f"{out / f} already holds a run ({what}) from an earlier comparison; --resume continues it, "
            "--overwrite replaces it (its checkpoint kept until the new run's first), --out NEW starts elsewhere"
        )
    return held


def draw_init(args, argv_child: list[str], out: Path, held: dict) -> str:
    """--same-init: <out>/init.safetensors drawn once (kept as it is when --resume continues runs that
    started from it); returns the report's line about the initial weights."""
    init_path = out / "init.safetensors"
    if not (args.resume and held and init_path.is_file()):
        proc = spawn(
            [sys.executable, "-m", f"vgg_{DRAWS}.weights", f"--draw={init_path}", *argv_child],
            stderr=subprocess.PIPE,
            text=True,
        )
        _, err = proc.communicate()
        finish(proc)
        if STOPPED:
            raise signals.stopped(STOPPED[0])
        if proc.returncode:
            raise RunError(
                f"--same-init: drawing the initial weights failed: {(err.strip().splitlines() or ['?'])[-1]}"
            )
    argv_child.append(f"--init-from={init_path}")
    return (
        f"every framework starts from the same weights, drawn once by PyTorch (--init {args.init}, "
        f"--seed {args.seed}): {init_path}"
    )


def compare_once(args, out: Path) -> list[dict]:
    """One comparison into `out` (already checked and locked): each framework of args.frameworks
    trained in turn, then the report. Ctrl-C or SIGTERM is passed on to the running child; the
    report is still written, with the frameworks that did not finish marked, and Interrupted
    raised after it."""
    from .cli import train_parser

    held = held_runs(args, out)
    argv_child = child_argv(args, train_parser("", ""))
    STOPPED.clear()
    with signals.passed_on(RUNNING, STOPPED):
        init = "each framework draws its own initial weights (--init, --seed) with its own random generator"
        same_init = args.same_init and not args.init_from
        if same_init:
            init = draw_init(args, argv_child, out, held)
        elif args.init_from:
            init = f"every framework starts from the weights in {args.init_from}"
        if args.progress is not False and (args.progress or sys.stderr.isatty()):
            argv_child.append("--progress")  # the child's stderr is our pipe, not a terminal

        def one(f):
            if STOPPED:
                return {"framework": f, "status": "not started (interrupted)", "seconds": 0.0}
            # --resume continues the runs there are and starts the others; --overwrite (checked above)
            # leaves each earlier checkpoint until the new run's first one replaces it
            again = ["--resume"] if args.resume and f in held else ["--overwrite"] if f in held else []
            return run_one(f, argv_child + again, out / f)

        if args.concurrently:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(args.frameworks)) as pool:
                rows = list(pool.map(one, args.frameworks))
        else:
            rows = [one(f) for f in args.frameworks]
        write_report(out, rows, argv_child, init, same_init)
    if STOPPED:
        cut = next((r["framework"] for r in rows if r["status"].startswith("interrupted")), None)
        e = signals.stopped(STOPPED[0])
        kept = f"; {cut} kept its last checkpoint: --resume continues" if cut else ""
        raise Interrupted(
            f"{signals.what(e)}{f' during {cut}' if cut else ''}; the report in {out} holds the frameworks "
            f"that finished and marks the others{kept}",
            code=signals.exit_code(e),
        )
    return rows


def compare(args) -> list[dict]:
    """One comparison, as the command line asked (args from parse_args): the checks, the lock on
    --out, the frameworks trained in turn and the report; RunError (exit 1) when one did not finish."""
    out = Path(args.out or "runs/compare")
    if not args.rewrite_report:
        held_runs(args, out)  # refused before anything is made or locked (checked again under the lock)
    check_out(out, "compare")
    with FolderLock(out, "compare"):
        if args.rewrite_report:
            rows, argv_child, init = reread(out, args.frameworks)
            write_report(out, rows, argv_child, init, "drawn once" in init)
            return rows
        rows = compare_once(args, out)
    failed = [r["framework"] for r in rows if r["status"] != "finished"]
    if failed:
        raise RunError(f"{', '.join(failed)} did not finish; the report in {out} says why", code=1)
    return rows


def main(argv=None):
    with main_guard():
        args = parse_args(argv)
        if args.seeds is None:
            compare(args)
            return
        from .cli import train_parser
        from .seeds import run_seeds  # over seeds: one comparison per seed, then the report over them

        run_seeds(args, child_argv(args, train_parser("", "")), args.frameworks, lambda a: compare(parse_args(a)))


if __name__ == "__main__":
    main()
