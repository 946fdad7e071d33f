"""`python -m common.compare --seeds 0 1 2 3 4 [training flags] --out D`: the comparison repeated
over seeds, and whether the differences between frameworks outlast the seed-to-seed spread.

For each seed S, the single comparison as `common.compare --seed S --out D/seed-S` makes it (a
common start drawn from S, the frameworks trained from it one after another, its own report),
then D/report.md, report.json and report.png over all seeds: per framework the mean and 95%
interval of the final test accuracy, final training loss and examples/s, with each seed's value;
for each pair of frameworks the difference paired by seed, its interval and a sentence
(common.stats).

Running the same command again keeps every seed folder whose report shows each framework
finished with the same flags, and runs the others: an interrupted run continues with the
seed it was in. That seed starts afresh; with --resume, it continues from its checkpoints
where every framework has one (a run stopped after an epoch's checkpoint). --rewrite-report
trains nothing and writes the report over the seed folders there.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from . import stats
from .errors import RunError, UsageError
from .files import write_atomic, write_json
from .runfolder import FolderLock, check_out


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def common_flags(argv_child: list[str]) -> list[str]:
    """The training flags that every seed shares: all but --seed (compare passes no --resume on)."""
    return [a for a in argv_child if not a.startswith("--seed=")]


def finished(folder: Path, frameworks: list[str], flags: list[str], same_init: bool) -> bool:
    """True when folder/report.json shows each framework finished, trained with `flags` (--seed
    included) and the same --same-init choice: a seed that needs no new run. The flags are
    compared as parsed, so that a flag the report leaves out counts as its default."""
    from .cli import train_parser

    try:
        report = json.loads((folder / "report.json").read_text())
        rows = {r["framework"]: r for r in report["rows"]}
        if not all(rows.get(f, {}).get("status") == "finished" for f in frameworks):
            return False
        if bool(report.get("same_init")) != same_init:
            return False
        kept = [a for a in report["flags"] if not (report.get("same_init") and a.startswith("--init-from="))]
        parser = train_parser("", "")
        theirs, unknown = parser.parse_known_args(kept)
        ours = parser.parse_args(flags)
    except (OSError, ValueError, KeyError, TypeError, SystemExit):  # SystemExit: argparse refused a flag
        return False
    skip = {"resume", "overwrite", "progress"}
    return not unknown and all(getattr(theirs, k) == v for k, v in vars(ours).items() if k not in skip)


def single_argv(args, flags: list[str], seed: int, folder: Path, frameworks: list[str]) -> list[str]:
    """The command line of one seed's single comparison."""
    argv = [*flags, f"--seed={seed}", f"--out={folder}", f"--frameworks={','.join(frameworks)}"]
    argv.append("--same-init" if args.same_init else "--no-same-init")
    if args.concurrently:
        argv.append("--concurrently")
    if args.progress is not None:
        argv.append("--progress" if args.progress else "--no-progress")
    if args.resume and all(any((folder / f).glob("checkpoint-epoch*")) for f in frameworks):
        argv.append("--resume")  # each framework continues from its last epoch
    else:  # the seed starts afresh: an unfinished seed's runs are this command's own, redone
        argv.append("--overwrite")
    return argv


def run_seeds(args, argv_child: list[str], frameworks: list[str], single) -> None:
    """The multi-seed comparison; single(argv) runs one seed's comparison (common.compare.main)."""
    seeds = args.seeds
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    out = Path(args.out or "runs/compare-seeds")
    check_out(out, "seeds")
    with FolderLock(out, "seeds"):  # one comparison over seeds at a time; each seed's folder has its own lock
        _run_seeds(args, argv_child, frameworks, single, seeds, out)


def _run_seeds(args, argv_child, frameworks, single, seeds, out: Path) -> None:
    flags = common_flags(argv_child)
    same_init = args.same_init and not args.init_from
    if not args.rewrite_report:
        for seed in seeds:
            folder = seed_dir(out, seed)
            if finished(folder, frameworks, [*flags, f"--seed={seed}"], same_init):
                print(f"\n=== seed {seed}: kept, finished with these flags in {folder}", flush=True)
                continue
            print(f"\n=== seed {seed} of {' '.join(map(str, seeds))}: {folder}", flush=True)
            try:
                single(single_argv(args, flags, seed, folder, frameworks))
            except RunError as e:
                if e.code != 1:  # 1: a framework failed, reported in the seed's report; go on
                    raise
    results, rows_by_seed, missing = read_seeds(out, seeds, frameworks)
    if not rows_by_seed:
        raise RunError(f"no seed folder with a report.json in {out} (seed-{seeds[0]}/ ...); run the comparison first")
    ran = {r["framework"] for rows in rows_by_seed.values() for r in rows}
    frameworks = [f for f in frameworks if f in ran]  # --rewrite-report: those the seed folders hold
    write_report(out, seeds, frameworks, results, rows_by_seed, missing)
    if missing or any(r["status"] != "finished" for rows in rows_by_seed.values() for r in rows):
        raise RunError(f"not every seed and framework finished; the report in {out} says which", code=1)


def read_seeds(out: Path, seeds: list[int], frameworks: list[str]):
    """({seed: {framework: {metric: value}}} of the finished runs, {seed: report rows, with their
    curves}, [seeds without a report])."""
    from .compare import reread

    results, rows_by_seed, missing = {}, {}, []
    for seed in seeds:
        folder = seed_dir(out, seed)
        if not (folder / "report.json").is_file():
            missing.append(seed)
            continue
        rows = reread(folder, frameworks)[0]
        rows_by_seed[seed] = rows
        results[seed] = {
            r["framework"]: {m: r.get(m) for m in stats.METRICS} for r in rows if r.get("status") == "finished"
        }
    return results, rows_by_seed, missing


def _cell(entry, fmt: str) -> str:
    if not entry:
        return "-"
    if entry["low"] is None:
        return fmt.format(entry["mean"]) + " (one seed)"
    return f"{fmt.format(entry['mean'])} ({fmt.format(entry['low'])} to {fmt.format(entry['high'])})"


def tables(summary: dict, frameworks: list[str], seeds: list[int], rows_by_seed: dict) -> str:
    """Per framework (mean and interval, each seed's value), each seed, and each pair, in Markdown."""
    head = [stats.METRICS[m][0] for m in stats.METRICS]
    lines = ["| framework | " + " | ".join(head) + " | seeds |", "|---" * (len(head) + 2) + "|"]
    for f in frameworks:
        s = summary["frameworks"][f]
        n = max((e["n"] for e in s.values() if e), default=0)
        lines.append(f"| {f} | " + " | ".join(_cell(s[m], stats.METRICS[m][2]) for m in stats.METRICS) + f" | {n} |")
    lines += ["", "| seed | framework | " + " | ".join(head) + " | status |", "|---" * (len(head) + 3) + "|"]
    for seed in seeds:
        for r in rows_by_seed.get(seed, []):
            cells = [stats.METRICS[m][2].format(r[m]) if r.get(m) is not None else "-" for m in stats.METRICS]
            lines.append(f"| {seed} | {r['framework']} | " + " | ".join(cells) + f" | {r['status']} |")
    lines += ["", "| a - b | metric | difference | 95% interval | p | verdict |", "|---|---|---|---|---|---|"]
    for p in summary["pairs"]:
        fmt = stats.METRICS[p["metric"]][2]
        span = "-" if p["low"] is None else f"{fmt.format(p['low'])} to {fmt.format(p['high'])}"
        pval = "-" if p["p"] is None else f"{p['p']:.2g}"
        lines.append(
            f"| {p['a']} - {p['b']} | {stats.METRICS[p['metric']][0]} | {fmt.format(p['mean'])} | {span} "
            f"| {pval} | {p['sentence']} |"
        )
    return "\n".join(lines)


def write_report(out: Path, seeds, frameworks, results, rows_by_seed, missing) -> None:
    summary = stats.summarize(results, frameworks)
    done = [s for s in seeds if s in rows_by_seed]
    first = rows_by_seed[done[0]]
    data = next((r["data"] for r in first if r.get("data")), "unknown")
    minutes = sum(r.get("seconds", 0) for rows in rows_by_seed.values() for r in rows) / 60
    report = json.loads((seed_dir(out, done[0]) / "report.json").read_text())
    init, same = report.get("init", "unknown"), report.get("same_init")
    # the flags the first seed ran with, as every seed shares them
    flags = [
        a
        for a in common_flags(report["flags"])
        if a not in ("--overwrite", "--progress") and not (same and a.startswith("--init-from="))
    ]
    start = (
        "for each seed, one set of initial weights drawn by PyTorch from that seed, shared by the frameworks "
        "(seed-S/init.safetensors)"
        if same
        else init
    )
    text = (
        f"# VGG on Fashion-MNIST, {len(frameworks)} frameworks over {len(done)} seeds\n\n"
        f"flags: `{' '.join(flags)}` and `--seed S` for each seed S in {' '.join(map(str, done))}"
        + (f" (no report yet for seed {' '.join(map(str, missing))})" if missing else "")
        + f"\n\ndata: {data}\n\ninitial weights: {start}\n\n"
        f"time: {minutes:.0f} minutes of training processes over the seeds\n\n"
        f"{tables(summary, frameworks, seeds, rows_by_seed)}\n\n"
        "Each value is the mean over the seeds with its 95% interval, Student's t with n - 1 degrees of freedom "
        "(scipy.stats). A difference a - b is paired by seed, since each seed is one start shared by the "
        "frameworks: its interval is the paired t interval of the differences, and p the paired t test's. "
        "Ahead: higher accuracy, lower loss, more examples/s. The final training loss is the last epoch's "
        "mean, as d2l prints it. examples/s depend on the machine's load at the "
        "time more than on the seed. Each seed's own report: "
        + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in done)
        + ".\n\n![over seeds](report.png)\n"
    )
    write_atomic(out / "report.md", text)
    write_json(
        out / "report.json",
        {
            "seeds": seeds,
            "finished_seeds": done,
            "missing_seeds": missing,
            "flags": flags,
            "data": data,
            "same_init": same,
            "test": "Student t over seeds (scipy.stats.ttest_1samp; paired: the differences by seed)",
            **json.loads(json.dumps(summary)),  # seeds as the keys JSON gives back
        },
    )
    save_plot(out / "report.png", summary, frameworks, rows_by_seed)
    print("\n" + tables(summary, frameworks, seeds, rows_by_seed))
    print(f"\ndata: {data}\nwrote {out / 'report.md'}, {out / 'report.json'} and {out / 'report.png'}")


def smoothed_loss(row: dict):
    """(epochs, training loss) of a run: its per-step losses, averaged over a window of about a
    fiftieth of an epoch's steps (the step losses of one batch are noisy), or its curve's points."""
    if row.get("step_loss"):
        loss, per_epoch = np.asarray(row["step_loss"], np.float64), row["steps_per_epoch"]
        w = max(1, min(len(loss), per_epoch // 50))
        mean = np.convolve(loss, np.ones(w) / w, mode="valid")
        return (np.arange(len(mean)) + w) / per_epoch, mean
    curve = row.get("curve") or []
    return np.array([p["epoch"] for p in curve], np.float64), np.array([p["loss"] for p in curve], np.float64)


def save_plot(path, summary: dict, frameworks: list[str], rows_by_seed: dict) -> None:
    """Top: final test accuracy, final training loss and examples/s, each seed a dot and the mean
    with its 95% interval beside them, one colour per framework. Bottom: the training loss,
    the mean over seeds as a line and the band from the lowest to the highest seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: slow, and only the plot needs it
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(13, 8.5))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.1))
    colours = {f: f"C{i}" for i, f in enumerate(frameworks)}
    for k, metric in enumerate(stats.METRICS):
        ax = fig.add_subplot(grid[0, k])
        label, higher, _ = stats.METRICS[metric]
        for i, f in enumerate(frameworks):
            e = summary["frameworks"][f][metric]
            if not e:
                continue
            vals = list(e["values"].values())
            jitter = np.linspace(-0.25, -0.05, len(vals)) if len(vals) > 1 else np.array([-0.15])
            ax.plot(i + jitter, vals, "o", color=colours[f], alpha=0.55, ms=5, label="each seed" if i == 0 else None)
            if e["low"] is not None:
                ax.errorbar(
                    [i + 0.15],
                    [e["mean"]],
                    yerr=[[e["mean"] - e["low"]], [e["high"] - e["mean"]]],
                    fmt="s",
                    color="black",
                    ms=6,
                    capsize=6,
                    lw=1.5,
                    label="mean, 95% interval" if i == 0 else None,
                )
            else:
                ax.plot([i + 0.15], [e["mean"]], "s", color="black", ms=6)
        ax.set_xticks(range(len(frameworks)), frameworks)
        ax.set_xlim(-0.6, len(frameworks) - 0.4)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.ticklabel_format(axis="y", useOffset=False)
        if k == 0:
            ax.legend(fontsize=8, loc="best")
    ax = fig.add_subplot(grid[1, :])
    n_seeds = 0
    for f in frameworks:
        curves = [smoothed_loss(r) for rows in rows_by_seed.values() for r in rows if r["framework"] == f]
        curves = [c for c in curves if len(c[0])]
        if not curves:
            continue
        n = min(len(c[1]) for c in curves)
        x, ys = curves[0][0][:n], np.array([c[1][:n] for c in curves])
        n_seeds = max(n_seeds, len(curves))
        ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=colours[f], alpha=0.2, lw=0)
        ax.plot(x, ys.mean(axis=0), "-", color=colours[f], lw=1.2, label=f"{f} ({len(curves)} seeds)")
    ax.set_yscale("log")  # the late part of the curve, where the frameworks might part, gets the room
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 0.4, not 4 x 10^-1
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.set(
        xlabel="epoch",
        ylabel="training loss (log scale)",
        title=f"training loss: mean over the seeds, band from the lowest to the highest of {n_seeds}",
    )
    ax.grid(alpha=0.3)
    if n_seeds:
        ax.legend(fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


if __name__ == "__main__":  # the command is common.compare's
    sys.exit("use: python -m common.compare --seeds 0 1 2 ... [training flags] --out FOLDER")
