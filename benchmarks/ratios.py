"""One throughput run against another: each framework's examples/s in the second run over the first's,
for every image size both measured, e.g. bfloat16 against float32:

    python -m benchmarks.ratios FLOAT32.json BFLOAT16.json [--plot ratios.png] [--out ratios.json]

FLOAT32.json and BFLOAT16.json are what `python -m benchmarks.throughput --out` wrote. For each
(framework, size): training compute only, training end to end, the train script's own figure (the
cross-check, where the run made one) and inference compute only, each as `second / first = ratio`.
A ratio is as good as its two runs: the header names both machines and loads, and a row whose
cross-check read more than 20% apart in either run is marked APART. Runs on different processors,
or of different models, batch sizes or devices, are refused: their ratio would not be one framework's.
"""

from __future__ import annotations

import argparse
import io

from common import measure
from common.cli import main_guard
from common.errors import UsageError
from common.files import check_writable, write_atomic, write_json

from .throughput import read_result

# What must be the same in both runs for a ratio to say something about the one thing that differs.
SAME_CONFIG = ("arch", "width_ratio", "batch_size", "device")
SAME_MACHINE = ("cpu", "cpus", "isa")
MEASURES = (  # (key, heading): where each figure lives in a result row
    ("train.compute", "train, compute only"),
    ("train.end_to_end", "train, end to end"),
    ("script", "its train script"),
    ("infer.compute", "inference"),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ratios",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("first", metavar="FIRST.json", help="the run divided by (e.g. float32)")
    p.add_argument("second", metavar="SECOND.json", help="the run divided (e.g. bfloat16)")
    p.add_argument("--plot", metavar="PNG", help="also draw the ratios, one bar per framework and size")
    p.add_argument("--out", metavar="JSON", help="also write the ratios as JSON")
    return p.parse_args(argv)


def figure(row: dict, key: str) -> float | None:
    """One examples/s figure of a result row (None where the run did not make it)."""
    if row.get("status") != "ok":
        return None
    if key == "script":
        c = row.get("cross_check", {})
        return c["examples_per_s"] if c.get("status") == "ok" else None
    phase, mode = key.split(".")
    return row[phase][mode]["examples_per_s"]


def check_comparable(a: dict, b: dict) -> None:
    """Refuse two runs whose ratio would mix a change of machine or model into the one of interest."""
    diff = [
        f"{k}: {a[part].get(k)} against {b[part].get(k)}"
        for part, keys in (("config", SAME_CONFIG), ("machine", SAME_MACHINE))
        for k in keys
        if a[part].get(k) != b[part].get(k)
    ]
    if diff:
        both = "; ".join(diff)
        raise UsageError(f"the two runs differ in more than what is compared ({both}); measure both the same way")


def ratios(a: dict, b: dict) -> list[dict]:
    """Per (framework, size) in both runs: each figure of b over a's, and whether either cross-check was apart."""
    rows = []
    first = {(r["framework"], r["size"]): r for r in a["results"]}
    for r in b["results"]:
        base = first.get((r["framework"], r["size"]))
        if base is None:
            continue
        row = {"framework": r["framework"], "size": r["size"]}
        for key, _ in MEASURES:
            x, y = figure(base, key), figure(r, key)
            row[key] = {"first": x, "second": y, "ratio": y / x if x and y else None}
        row["apart"] = any(not rr.get("cross_check", {}).get("agrees", True) for rr in (base, r))
        rows.append(row)
    if not rows:
        raise UsageError("the two runs have no framework and image size in common")
    return rows


def text(a: dict, b: dict, rows: list[dict]) -> str:
    def label(result):
        c = result["config"]
        return f"{c.get('precision', '?')} ({result['time']})"

    lines = [
        f"second / first: {label(b)} / {label(a)}",
        f"first:  {measure.describe(a['machine'], a['matmul'])}",
        f"second: {measure.describe(b['machine'], b['matmul'])}",
        "",
        f"{'':12} {'size':>4} | " + " | ".join(f"{h:^26}" for _, h in MEASURES),
    ]
    for row in rows:
        cells = []
        for key, _ in MEASURES:
            v = row[key]
            cells.append(
                f"{v['second']:>7,.0f} / {v['first']:>6,.0f} = {v['ratio']:>5.2f}x" if v["ratio"] else f"{'-':^26}"
            )
        lines.append(
            f"{row['framework']:12} {row['size']:>4} | " + " | ".join(cells) + (" APART" if row["apart"] else "")
        )
    lines.append(
        "\nexamples/s; train script: its own figure in the throughput run's cross-check; APART: a cross-check "
        "more than 20% from the benchmark in either run"
    )
    return "\n".join(lines)


def plot(path, a: dict, b: dict, rows: list[dict]) -> None:
    """One group of bars per framework, one bar per image size: training compute only (filled) and
    the train script's own figure (hatched), with the line at 1 (no change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: slow, and only the plot needs it
    from matplotlib.figure import Figure

    frameworks = list(dict.fromkeys(r["framework"] for r in rows))
    sizes = sorted({r["size"] for r in rows})
    fig = Figure(figsize=(1.6 + 1.5 * len(frameworks), 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / (2 * len(sizes))
    for i, size in enumerate(sizes):
        for j, (key, hatch) in enumerate((("train.compute", None), ("script", "//"))):
            xs, ys = [], []
            for k, fw in enumerate(frameworks):
                row = next((r for r in rows if r["framework"] == fw and r["size"] == size), None)
                if row and row[key]["ratio"]:
                    xs.append(k - 0.4 + width * (2 * i + j + 0.5))
                    ys.append(row[key]["ratio"])
            ax.bar(
                xs,
                ys,
                width,
                color=f"C{i}",
                hatch=hatch,
                edgecolor="white" if hatch else None,
                label=f"{size} px, " + ("benchmark" if j == 0 else "train script"),
            )
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xticks(range(len(frameworks)), frameworks)
    ax.set_ylabel(f"{b['config'].get('precision')} / {a['config'].get('precision')} examples/s")
    ax.set_title(f"training: {measure.describe(b['machine']).split(';')[0].removeprefix('machine: ')}", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=len(sizes), loc="upper left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def main(argv=None):
    with main_guard():
        args = parse_args(argv)
        if args.out:
            check_writable(args.out, "--out")
        if args.plot:
            check_writable(args.plot, "--plot")
        a, b = read_result(args.first), read_result(args.second)
        check_comparable(a, b)
        rows = ratios(a, b)
        print(text(a, b, rows))
        if args.out:
            write_json(args.out, {"first": args.first, "second": args.second, "ratios": rows})
            print(f"wrote {args.out}")
        if args.plot:
            plot(args.plot, a, b, rows)
            print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
