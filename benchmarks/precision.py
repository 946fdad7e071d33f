"""bfloat16 against float32: the same short run in both precisions, in the three frameworks, over a
few seeds, so that bfloat16's rounding can be told from seed-to-seed spread.

    python -m benchmarks.precision --data-dir PATH                          # CPU preset, seeds 0 1 2
    python -m benchmarks.precision --seeds 0 --extra --max-steps 20         # a smoke run

Two comparisons over the seeds (`python -m common.compare --seeds S ... --preset cpu --precision P
--out <out>/P`): for each seed the three frameworks start from the weights that seed draws, and the
float32 and bfloat16 runs of a seed start from the same weights and see the same batches. The
difference that matters is bfloat16 minus float32 in the same framework and seed: its mean over the
seeds with a 95% paired t interval (common.stats, as the comparison over seeds reports the
differences between frameworks) is printed and written to --report (JSON). Seeds that a folder
already holds, finished with the same flags, are kept (common.compare --seeds), so a stopped sweep
goes on where it stopped, and <out>/float32 may be an earlier comparison over the same seeds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import FRAMEWORKS, stats
from common.cli import main_guard
from common.errors import RunError
from common.files import write_json

PRECISIONS = ("float32", "bfloat16")


def compare(out: Path, precision: str, args) -> dict:
    """The comparison over args.seeds in one precision; returns {seed: {framework: {metric: value}}}."""
    cmd = [sys.executable, "-m", "common.compare", "--seeds", *map(str, args.seeds), "--preset", args.preset]
    cmd += ["--precision", precision, "--epochs", str(args.epochs), "--out", str(out), "--no-progress"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += args.extra
    print("$", " ".join(cmd[1:]), flush=True)
    if subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode:
        raise RunError(f"the {precision} comparison did not finish every seed; its report in {out} says why", code=1)
    report = json.loads((out / "report.json").read_text())
    values = {f: {m: e["values"] for m, e in by.items() if e} for f, by in report["frameworks"].items()}
    return {
        int(s): {f: {m: v[str(s)] for m, v in vs.items() if str(s) in v} for f, vs in values.items()}
        for s in report["finished_seeds"]
    }


def summarise(runs: dict, seeds: list[int]) -> tuple[dict, list[str]]:
    """Per framework: each precision's test accuracy by seed, bfloat16 minus float32 (points) with
    its paired interval, and the examples/s ratio by seed; and the printed table's lines."""
    summary = {}
    lines = [
        "| framework | float32 test acc | bfloat16 test acc | bfloat16 - float32 (points, 95% interval) | verdict |",
        "|---|---|---|---|---|",
    ]
    for f in FRAMEWORKS:
        acc = {p: {s: runs[p][s][f]["test_acc"] for s in seeds if f in runs[p].get(s, {})} for p in PRECISIONS}
        if not acc["float32"] or not acc["bfloat16"]:
            continue
        d, by_seed = stats.paired(
            {s: 100 * v for s, v in acc["bfloat16"].items()}, {s: 100 * v for s, v in acc["float32"].items()}
        )
        speed = {
            s: runs["bfloat16"][s][f]["examples_per_sec"] / runs["float32"][s][f]["examples_per_sec"] for s in by_seed
        }
        verdict = (
            stats.SAME
            if d.n < 2 or d.low <= 0 <= d.high
            else f"bfloat16 {'ahead' if d.mean > 0 else 'behind'} by {abs(d.mean):.2f} points"
        )
        summary[f] = {
            "test_acc": acc,
            "difference_points": {**d.as_dict(), "by_seed": by_seed},
            "speed_ratio": speed,
            "verdict": verdict,
        }
        mean = {p: sum(acc[p].values()) / len(acc[p]) for p in PRECISIONS}
        lines.append(
            f"| {f} | {mean['float32']:.4f} | {mean['bfloat16']:.4f} | "
            f"{d.mean:+.2f} ({d.low:+.2f} to {d.high:+.2f}) | {verdict} |"
        )
    return summary, lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="cpu", help="common.cli's preset the runs use (default cpu)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data-dir", metavar="PATH", help="Fashion-MNIST folder (default: as the train scripts find it)")
    p.add_argument("--out", default="runs/precision", help="the comparisons' folders, <out>/float32 and <out>/bfloat16")
    p.add_argument("--report", default="benchmarks/results/precision/summary.json")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further training flags, last")
    with main_guard():
        args = p.parse_args(argv)
        runs = {precision: compare(Path(args.out) / precision, precision, args) for precision in PRECISIONS}
        seeds = [s for s in args.seeds if all(s in runs[p] for p in PRECISIONS)]
        summary, lines = summarise(runs, seeds)
        write_json(
            args.report,
            {
                "command": " ".join(["python -m benchmarks.precision", *(argv if argv is not None else sys.argv[1:])]),
                "preset": args.preset,
                "epochs": args.epochs,
                "seeds": seeds,
                "test": "paired Student t over seeds (common.stats.paired)",
                "frameworks": summary,
            },
        )
        print("\n".join(lines))
        print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
