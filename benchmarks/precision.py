"""bfloat16 against float32: the test accuracy of the same short run in both precisions, in the three
frameworks, over a few seeds, so that bfloat16's rounding can be told from run-to-run noise.

    python -m benchmarks.precision --data-dir ../shared/fashion-mnist                 # CPU preset, seeds 0 1 2
    python -m benchmarks.precision --seeds 0 --epochs 1 --extra --max-steps 20       # a smoke run

For each seed and each precision: `python -m common.compare --same-init --preset cpu --seed S
--precision P` (one epoch of the CPU preset: VGG-11/4 at 32 px, Adam 0.001, batch 128), the three
frameworks one after the other, each starting from the weights that seed draws; the float32 and
bfloat16 runs of a seed start from the same weights and see the same batches. The difference
that matters is bfloat16 minus float32 in the same framework and seed; its mean over the seeds
and its spread are printed and written to --report (JSON), with the examples/s of each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from common import FRAMEWORKS
from common.files import write_atomic


def run(out: Path, seed: int, precision: str, args) -> dict:
    """One comparison; returns {framework: (final test accuracy, training examples/s)}."""
    cmd = [sys.executable, "-m", "common.compare", "--same-init", "--preset", args.preset, "--seed", str(seed)]
    cmd += ["--precision", precision, "--epochs", str(args.epochs), "--out", str(out), "--no-progress"]
    cmd += ["--data-dir", args.data_dir] if args.data_dir else []
    cmd += args.extra
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads((out / "report.json").read_text())["rows"]
    return {r["framework"]: {"test_acc": r["test_acc"], "examples_per_sec": r["examples_per_sec"]} for r in rows}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--preset", default="cpu", help="common.cli's preset the runs use (default cpu)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data-dir", metavar="PATH", help="Fashion-MNIST folder (default: as the train scripts find it)")
    p.add_argument("--out", default="runs/precision", help="the runs' folders (default runs/precision)")
    p.add_argument("--report", default="benchmarks/results/precision/summary.json")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further training flags, last")
    args = p.parse_args(argv)

    runs, report = {}, {"command": " ".join(sys.argv), "epochs": args.epochs, "preset": args.preset}
    for seed in args.seeds:
        for precision in ("float32", "bfloat16"):
            runs[f"{precision}/seed{seed}"] = run(Path(args.out) / f"{precision}-seed{seed}", seed, precision, args)
        done = args.seeds[
            : args.seeds.index(seed) + 1
        ]  # the report is rewritten after each seed: a stopped sweep keeps its seeds
        summary, lines = summarise(runs, done)
        write_atomic(
            args.report, json.dumps({**report, "seeds": done, "frameworks": summary, "runs": runs}, indent=1) + "\n"
        )
    print("\n".join(lines))
    print(f"wrote {args.report}")


def summarise(runs: dict, seeds: list[int]):
    """Per framework: the accuracies, bfloat16 minus float32 per seed (points), the speed ratios; and table lines."""
    summary, lines = {}, ["framework   float32 acc   bfloat16 acc   bf16 - fp32 (points)   bf16/fp32 ex/s"]
    for fw in FRAMEWORKS:
        fp = [runs[f"float32/seed{s}"][fw] for s in seeds]
        bf = [runs[f"bfloat16/seed{s}"][fw] for s in seeds]
        diff = [100 * (b["test_acc"] - f["test_acc"]) for f, b in zip(fp, bf)]
        speed = [b["examples_per_sec"] / f["examples_per_sec"] for f, b in zip(fp, bf)]
        summary[fw] = {
            "float32_test_acc": [f["test_acc"] for f in fp],
            "bfloat16_test_acc": [b["test_acc"] for b in bf],
            "difference_points": diff,
            "mean_difference_points": statistics.fmean(diff),
            "speed_ratio": speed,
        }
        lines.append(
            f"{fw:<10}  {statistics.fmean(f['test_acc'] for f in fp):.4f}        "
            f"{statistics.fmean(b['test_acc'] for b in bf):.4f}         "
            f"{statistics.fmean(diff):+.2f} ({min(diff):+.2f} .. {max(diff):+.2f})          "
            f"{statistics.fmean(speed):.2f}"
        )
    return summary, lines


if __name__ == "__main__":
    main()
