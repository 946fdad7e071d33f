"""`python -m common.profile`: where the time and the memory of a VGG go, layer by layer, in
PyTorch, MXNet Gluon and Flax side by side.

    python -m common.profile [--arch vgg11] [--width-ratio 4] [--image-size 32 96 224] [--batch-size 128]

1. The arithmetic, from the architecture alone (`layer_costs`): each convolution, pooling and
   dense layer's output shape, parameters, forward FLOPs (multiply-adds x 2) and the activation
   memory kept for the backward pass, with each layer's share.
2. The measurement, each framework in a process of its own (benchmarks/profile_worker.py): every
   layer's forward and backward time in that framework's own idiom, its GFLOP/s and share of the
   step, against the train script's whole `train_step`, and the process's peak memory.
3. A picture (PNG) of both, and with several --image-size values a table against resolution.

This module imports no framework: the frameworks run in the worker processes.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from common import FRAMEWORKS as NAMES
from common import PACKAGES, measure
from common.arch import VGGSpec, make_spec, parse_arch
from common.cli import main_guard
from common.errors import ArchError, RunError, UsageError
from common.files import check_writable, write_atomic, write_json

FRAMEWORKS = PACKAGES
ALIASES = dict(zip(NAMES, PACKAGES))  # torch -> vgg_torch
BYTES = {"float32": 4, "bfloat16": 2}
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MXNET_CPU_WORKER_NTHREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}
MB = 2**20


# ---------------------------------------------------------------------------- the arithmetic


def layer_costs(spec: VGGSpec) -> list[dict]:
    """One row per convolution, pooling and dense layer, per example:

    output_shape    (C, H, W) or (units,)
    parameters      trainable (batch-norm scale and shift included, with their convolution)
    flops           forward multiply-adds x 2 (convolutions and dense layers; pooling counts 0)
    backward_flops  the gradients of the weights and of the input, each as many as the forward;
                    the first layer's input needs no gradient, so it does half
    activations     values kept for the backward pass: the layer's output (its ReLU's, which the
                    next layer also keeps as its input); with batch norm the convolution's output
                    too. The input image is the first layer's; count it apart (spec.in_channels x H x W).
    """
    rows, cin = [], spec.in_channels
    h, w = spec.image_size
    for i, b in enumerate(spec.blocks, 1):
        for j, k in enumerate(b.kernel_sizes, 1):
            c = b.out_channels
            params = k * k * cin * c + c + (2 * c if spec.batch_norm else 0)
            flops = 2 * k * k * cin * c * h * w
            rows.append(
                dict(
                    layer=f"block{i}.conv{j}",
                    kind="conv",
                    output_shape=(c, h, w),
                    parameters=params,
                    flops=flops,
                    backward_flops=flops if not rows else 2 * flops,
                    activations=c * h * w * (2 if spec.batch_norm else 1),
                )
            )
            cin = c
        h, w = h // 2, w // 2
        rows.append(
            dict(
                layer=f"block{i}.pool",
                kind="pool",
                output_shape=(cin, h, w),
                parameters=0,
                flops=0,
                backward_flops=0,
                activations=cin * h * w,
            )
        )
    fin = cin * h * w
    for n, (a, units) in enumerate(
        ((fin, spec.hidden_units), (spec.hidden_units, spec.hidden_units), (spec.hidden_units, spec.num_classes)), 1
    ):
        rows.append(
            dict(
                layer=f"fc{n}",
                kind="dense",
                output_shape=(units,),
                parameters=a * units + units,
                flops=2 * a * units,
                backward_flops=4 * a * units,
                activations=units,
            )
        )
    return rows


def arithmetic(spec: VGGSpec, batch: int, precision: str = "float32") -> dict:
    """layer_costs at a batch size, with shares and totals; bytes in the precision's size."""
    rows, nbytes = layer_costs(spec), BYTES[precision]
    total = {k: sum(r[k] for r in rows) for k in ("parameters", "flops", "backward_flops", "activations")}
    for r in rows:
        r["output_shape"] = list(r["output_shape"])
        r["activation_bytes"] = r["activations"] * batch * nbytes
        r["batch_flops"] = r["flops"] * batch
        for k in ("parameters", "flops", "activations"):
            r[f"{k}_share"] = r[k] / total[k] if total[k] else 0.0
    h, w = spec.image_size
    return {
        "rows": rows,
        "batch": batch,
        "precision": precision,
        "bytes_per_value": nbytes,
        "totals": {
            **total,
            "train_flops_per_example": total["flops"] + total["backward_flops"],
            "input_bytes": spec.in_channels * h * w * batch * nbytes,
            "activation_bytes": total["activations"] * batch * nbytes,
            "weight_bytes": total["parameters"] * 4,
        },
    }  # float32 weights, whatever the precision


# ---------------------------------------------------------------------------- the command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m common.profile",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--arch",
        default="vgg11",
        type=parse_arch,
        help="a table name or (num_convs, out_channels) tuples (default vgg11)",
    )
    p.add_argument(
        "--width-ratio", type=int, default=4, help="divide every block's channels by this (default 4, the d2l recipe's)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        nargs="+",
        default=[96],
        help="input height and width; several values profile each (e.g. 32 96 224; default 96)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="default %(default)s")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto: each framework's GPU if it sees one, else the CPU (default auto)",
    )
    p.add_argument(
        "--precision",
        choices=tuple(BYTES),
        default="float32",
        help="float32, or bfloat16 mixed precision as benchmarks.throughput runs it (default float32)",
    )
    p.add_argument(
        "--frameworks", nargs="+", default=list(FRAMEWORKS), help=f"any of {', '.join(FRAMEWORKS)} (default: all)"
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed runs of each layer and timed training steps; the best is reported (default 3)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed training steps first (default 2, at least 1: the first compiles Flax's step and "
        "builds Gluon's graph)",
    )
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: elapsed time (default). cpu: each worker's CPU time, on one thread per framework "
        f"({' '.join(f'{k}={v!r}' for k, v in ONE_THREAD.items())}): on a shared machine it leaves "
        "out the time spent waiting for a core, and is the wall time of a one-thread run on an idle one",
    )
    p.add_argument(
        "--out",
        default="runs/profile",
        help="a folder (profile.json and profile.png in it) or a .json path (the .png beside it); default runs/profile",
    )
    p.add_argument("--arithmetic-only", action="store_true", help="print the arithmetic; start no framework")
    p.add_argument(
        "--report", metavar="JSON", help="measure nothing: print the tables of an earlier run and draw its picture"
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per worker process (default 900)")
    args = p.parse_args(argv)
    args.frameworks = list(dict.fromkeys(ALIASES.get(f, f) for f in args.frameworks))
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown:
        raise UsageError(f"--frameworks: unknown {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    for name, v in (("--batch-size", args.batch_size), ("--repeat", args.repeat), ("--timeout", args.timeout)):
        if not 0 < v < float("inf"):  # NaN fails this too
            raise UsageError(f"{name} must be a positive finite number, got {v}")
    if args.clock == "cpu" and args.device == "gpu":
        raise UsageError("--clock cpu times the CPU's work; on a GPU use --clock wall")
    if args.warmup < 1:
        raise UsageError(
            f"--warmup must be at least 1 (the first step compiles, and is never timed), got {args.warmup}"
        )
    try:
        for s in args.image_size:
            make_spec(args.arch, image_size=s, width_ratio=args.width_ratio)
    except ArchError as e:
        raise UsageError(str(e).replace("image_size", "--image-size")) from None
    out = Path(args.out)
    args.json_path = out if out.suffix == ".json" else out / "profile.json"
    args.png_path = args.json_path.with_suffix(".png")
    return args


def run_worker(cfg: dict, timeout: float, env: dict | None = None) -> dict:
    """Profile one (framework, size) in a fresh interpreter; a crash becomes a 'failed' row."""
    command = [sys.executable, "-m", "benchmarks.profile_worker"]
    return measure.run_worker(command, cfg, timeout, env, args=[cfg["framework"]])


def profile(args, argv) -> dict:
    started = time.time()
    load_start = os.getloadavg()
    base = {
        "arch": args.arch,
        "width_ratio": args.width_ratio,
        "batch_size": args.batch_size,
        "device": args.device,
        "precision": args.precision,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "clock": args.clock,
        # what the train scripts do (benchmarks.throughput's defaults)
        "torch_compile": False,
        "torch_memory_format": "channels_last",
        "gluon_hybridize": "static",
        "flax_donate": False,
    }
    sizes = []
    for size in args.image_size:
        spec = make_spec(args.arch, image_size=size, width_ratio=args.width_ratio)
        entry = {
            "image_size": size,
            "model": spec.name,
            "arithmetic": arithmetic(spec, args.batch_size, args.precision),
            "frameworks": [],
        }
        for fw in [] if args.arithmetic_only else args.frameworks:
            print(f"{size} px {fw}...", end=" ", file=sys.stderr, flush=True)
            t = time.perf_counter()
            r = run_worker(
                {**base, "framework": fw, "size": size}, args.timeout, ONE_THREAD if args.clock == "cpu" else None
            )
            print(
                f"{r['status']} in {time.perf_counter() - t:.0f} s"
                + (f": {r['message']}" if r["status"] != "ok" else ""),
                file=sys.stderr,
                flush=True,
            )
            entry["frameworks"].append(r)
        sizes.append(entry)
    return {
        "profile": "per-layer",
        "command": "python -m common.profile " + " ".join(argv),
        "config": base
        | {
            "image_sizes": args.image_size,
            "frameworks": args.frameworks,
            "env": ONE_THREAD if args.clock == "cpu" else {},
        },
        "machine": measure.machine(load_start),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.time() - started,
        "sizes": sizes,
    }


# ---------------------------------------------------------------------------- what a reader sees


def _short(fw: str) -> str:
    return fw.removeprefix("vgg_")


def _ok(entry) -> list[dict]:
    return [r for r in entry["frameworks"] if r["status"] == "ok"]


def measured(entry) -> dict:
    """Per framework: {layer: (forward s, backward s)}, the sum over layers and the step."""
    out = {}
    for r in _ok(entry):
        layers = {row["layer"]: (row["forward"]["best_s"], row["backward"]["best_s"]) for row in r["layers"]}
        out[r["framework"]] = {
            "layers": layers,
            "sum_s": sum(f + b for f, b in layers.values()),
            "step_s": r["step"]["best_s"],
            "memory": r["memory"],
        }
    return out


def _mem(m: dict) -> str:
    """The device's peak, or on a CPU the process's peak RSS and what the steps added to the built model's."""
    if "device_peak_mb" in m:
        return f"{m['device_peak_mb']:,.0f} MB device"
    return f"{m['peak_rss_after_step_mb']:,.0f} MB RSS (+{m['peak_rss_after_step_mb'] - m['rss_after_build_mb']:,.0f})"


def arithmetic_table(entry) -> str:
    a = entry["arithmetic"]
    t, batch = a["totals"], a["batch"]
    lines = [
        f"### {entry['model']} at {entry['image_size']} px, batch {batch}: the arithmetic "
        f"(activations in {a['precision']})",
        "",
        "| layer | output (C x H x W) | parameters | % | forward GFLOP | % | activations MB | % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in a["rows"]:
        lines.append(
            f"| {r['layer']} | {' x '.join(map(str, r['output_shape']))} | {r['parameters']:,} | "
            f"{100 * r['parameters_share']:.1f} | {r['batch_flops'] / 1e9:.2f} | {100 * r['flops_share']:.1f} | "
            f"{r['activation_bytes'] / MB:.1f} | {100 * r['activations_share']:.1f} |"
        )
    lines.append(
        f"| **total** | | **{t['parameters']:,}** | 100 | **{t['flops'] * batch / 1e9:.2f}** | 100 | "
        f"**{t['activation_bytes'] / MB:.1f}** | 100 |"
    )
    lines += [
        "",
        f"A training step (forward and backward) does {t['train_flops_per_example'] * batch / 1e9:.1f} GFLOP "
        f"({(t['train_flops_per_example']) / t['flops']:.2f}x the forward); it keeps "
        f"{(t['activation_bytes'] + t['input_bytes']) / MB:.0f} MB of activations (input included) "
        f"beside {t['weight_bytes'] / MB:.0f} MB of float32 weights and as much again of gradients.",
    ]
    return "\n".join(lines)


def measured_table(entry) -> str:
    m = measured(entry)
    if not m:
        return ""
    fws = list(m)
    a = entry["arithmetic"]
    rows = a["rows"]
    head = "| layer | FLOPs % | " + " | ".join(f"{_short(f)} ms fwd+bwd | GFLOP/s | % step" for f in fws) + " |"
    clock = {"wall": "wall time", "cpu": "CPU time, one thread"}[_ok(entry)[0].get("clock", "wall")]
    lines = [
        f"### {entry['model']} at {entry['image_size']} px, batch {a['batch']}: measured, per layer "
        f"({clock}; the best of each framework's runs)",
        "",
        head,
        "|---|---:|" + "---:|---:|---:|" * len(fws),
    ]
    for r in rows:
        cells = [r["layer"], f"{100 * r['flops_share']:.1f}"]
        for f in fws:
            fwd, bwd = m[f]["layers"].get(r["layer"], (float("nan"), float("nan")))
            train = (r["flops"] + r["backward_flops"]) * a["batch"]
            cells += [
                f"{1e3 * fwd:.1f} + {1e3 * bwd:.1f}",
                f"{train / (fwd + bwd) / 1e9:.0f}" if train else "",
                f"{100 * (fwd + bwd) / m[f]['step_s']:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    tf = a["totals"]["train_flops_per_example"] * a["batch"]
    sums = [(1e3 * m[f]["sum_s"], tf / m[f]["sum_s"] / 1e9, 100 * m[f]["sum_s"] / m[f]["step_s"]) for f in fws]
    lines.append(
        "| **sum of the layers** | 100 | " + " | ".join(f"**{t:.0f}** | {g:.0f} | {p:.0f}" for t, g, p in sums) + " |"
    )
    lines.append(
        "| **train_step** | | "
        + " | ".join(f"**{1e3 * m[f]['step_s']:.0f}** | {tf / m[f]['step_s'] / 1e9:.0f} | 100" for f in fws)
        + " |"
    )
    lines.append(
        "| step - sum | | "
        + " | ".join(
            f"{1e3 * (m[f]['step_s'] - m[f]['sum_s']):+.0f} | | {100 * (1 - m[f]['sum_s'] / m[f]['step_s']):+.0f}"
            for f in fws
        )
        + " |"
    )
    lines.append("| peak memory of the step | | " + " | ".join(f"{_mem(m[f]['memory'])} | | " for f in fws) + " |")
    lines += [
        "",
        "fwd + bwd: each layer alone, forward with what its backward keeps, then backward. step - sum: "
        "what the per-layer view misses (the loss, the optimiser's update, the framework's overhead per "
        "step) or counts twice (work that the whole step fuses or overlaps across layers). Memory on a "
        "CPU: the process's peak RSS after the training steps, and in brackets what they added to the "
        "built model's.",
    ]
    lines += gaps(entry)
    return "\n".join(lines)


def gaps(entry, top: int = 3) -> list[str]:
    """For each framework, the layers where it loses most against the fastest framework at that layer."""
    m = measured(entry)
    if len(m) < 2:
        return []
    layers = [r["layer"] for r in entry["arithmetic"]["rows"] if all(r["layer"] in m[f]["layers"] for f in m)]
    best = {k: min(sum(m[f]["layers"][k]) for f in m) for k in layers}
    out = ["", "Where each framework loses time against the fastest at each layer (forward + backward, ms):"]
    for f in m:
        loss = sorted(((sum(m[f]["layers"][k]) - best[k], k) for k in layers), reverse=True)
        total = sum(x for x, _ in loss)
        worst = ", ".join(
            f"{k} +{1e3 * x:.1f} ({1e3 * m[f]['layers'][k][0]:.1f} + {1e3 * m[f]['layers'][k][1]:.1f})"
            for x, k in loss[:top]
            if x > 0
        )
        out.append(f"- {_short(f)}: +{1e3 * total:.0f} ms over all layers" + (f"; most in {worst}" if worst else ""))
    return out


def resolution_table(result) -> str:
    sizes = result["sizes"]
    if len(sizes) < 2:
        return ""
    fws = [f for f in result["config"]["frameworks"] if any(measured(e).get(f) for e in sizes)]
    head = ["size", "parameters", "train GFLOP / step", "activations MB"] + [
        f"{_short(f)} {x}" for f in fws for x in ("step ms", "memory")
    ]
    lines = [
        f"### Against resolution: {sizes[0]['model']}, batch {sizes[0]['arithmetic']['batch']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
    ]
    for e in sizes:
        t, m = e["arithmetic"]["totals"], measured(e)
        cells = [
            f"{e['image_size']}",
            f"{t['parameters']:,}",
            f"{t['train_flops_per_example'] * e['arithmetic']['batch'] / 1e9:.1f}",
            f"{(t['activation_bytes'] + t['input_bytes']) / MB:,.0f}",
        ]
        for f in fws:
            cells += [f"{1e3 * m[f]['step_s']:,.0f}", _mem(m[f]["memory"])] if f in m else ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(result) -> str:
    parts = []
    for e in result["sizes"]:
        parts += [arithmetic_table(e), measured_table(e)]
        parts += [
            f"{r['framework']} at {e['image_size']} px: {r['status']}: {r.get('message', '')}"
            for r in e["frameworks"]
            if r["status"] != "ok"
        ]
    parts.append(resolution_table(result))
    return "\n\n".join(p for p in parts if p)


COLOURS = {"vgg_torch": "#ee4c2c", "vgg_gluon": "#3b7dd8", "vgg_flax": "#6a9a23"}


def save_picture(path, result) -> None:
    """Per image size, one row: the arithmetic's shares per layer (FLOPs, activation memory,
    parameters) beside each framework's forward + backward time per layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: slow, and only the picture needs it
    from matplotlib.figure import Figure

    sizes = result["sizes"]
    n = len(sizes[0]["arithmetic"]["rows"])
    fig = Figure(figsize=(13, (1.8 + 0.32 * n) * len(sizes)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sizes), 2, squeeze=False, gridspec_kw={"width_ratios": [1, 1.5]})
    for (left, right), e in zip(axes, sizes):
        rows = e["arithmetic"]["rows"]
        names = [r["layer"] for r in rows]
        ys = list(range(len(rows)))
        h = 0.27
        for k, (key, label, colour) in enumerate(
            (
                ("flops_share", "forward FLOPs", "#444444"),
                ("activations_share", "activation memory", "#b07aa1"),
                ("parameters_share", "parameters", "#f2b447"),
            )
        ):
            left.barh([y + (k - 1) * h for y in ys], [100 * r[key] for r in rows], h, label=label, color=colour)
        left.set(
            yticks=ys,
            yticklabels=names,
            xlabel="% of the model's total",
            title=f"{e['model']} at {e['image_size']} px: where the work is",
        )
        left.invert_yaxis()
        left.grid(axis="x", alpha=0.3)
        left.set_xlim(
            0, 145 * max(r[k] for r in rows for k in ("flops_share", "activations_share", "parameters_share"))
        )
        left.legend(loc="upper right", fontsize=8)  # the room the limit leaves
        m = measured(e)
        fws = list(m)
        h = 0.8 / max(1, len(fws))
        for k, f in enumerate(fws):
            pos = [y + (k - (len(fws) - 1) / 2) * h for y in ys]
            fwd = [1e3 * m[f]["layers"].get(x, (0, 0))[0] for x in names]
            bwd = [1e3 * m[f]["layers"].get(x, (0, 0))[1] for x in names]
            right.barh(
                pos,
                fwd,
                h,
                color=COLOURS.get(f),
                label=f"{_short(f)}: step {1e3 * m[f]['step_s']:.0f} ms, layers {1e3 * m[f]['sum_s']:.0f} ms",
            )
            right.barh(pos, bwd, h, left=fwd, color=COLOURS.get(f), alpha=0.45)
        if fws:  # where the time would go if it followed the FLOPs
            fastest = min(m[f]["sum_s"] for f in fws)
            right.scatter(
                [1e3 * fastest * r["flops_share"] for r in rows],
                ys,
                marker="|",
                s=300,
                color="black",
                zorder=3,
                label="time in proportion to FLOPs (of the fastest sum)",
            )
        clock = " (CPU time)" if fws and _ok(e)[0].get("clock") == "cpu" else ""
        right.set(
            yticks=ys,
            yticklabels=names,
            xlabel=f"ms{clock} per batch of {e['arithmetic']['batch']}: forward (solid) + backward (light)",
            title="where the time goes, per framework" if fws else "(not measured)",
        )
        right.invert_yaxis()
        right.grid(axis="x", alpha=0.3)
        if fws:
            right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(path, buf.getvalue())


def _folder(path: Path) -> None:
    """Before any measurement: an --out that cannot be written is refused now, not after the measuring."""
    check_writable(path, folder_hint="give a .json path or a folder that does not hold this name")


def _save(args, result, picture_only=False) -> None:
    """profile.json (unless picture_only) and profile.png; a failed write is one line naming the file."""
    try:
        if not picture_only:
            write_json(args.json_path, result)
        save_picture(args.png_path, result)
    except OSError as e:
        raise RunError(f"cannot write {e.filename}: {e.strerror}; the tables above are all that is kept") from None


def main(argv=None):
    with main_guard():
        argv = list(sys.argv[1:] if argv is None else argv)
        args = parse_args(argv)
        if args.report:
            try:
                result = json.loads(Path(args.report).read_text())
            except (OSError, ValueError) as e:
                raise RunError(
                    f"--report {args.report}: cannot read it ({e}); give the JSON an earlier run wrote"
                ) from None
            if not isinstance(result, dict) or result.get("profile") != "per-layer":
                raise RunError(f"--report {args.report} is not a JSON that python -m common.profile wrote")
            _folder(args.png_path)
            print(report(result))
            _save(args, result, picture_only=True)
            print(f"\nwrote {args.png_path}")
            return
        _folder(args.json_path)
        try:
            result = profile(args, argv)
        except KeyboardInterrupt as e:
            raise KeyboardInterrupt("nothing was written") from e
        print(report(result))
        _save(args, result)
        print(f"\nwrote {args.json_path} and {args.png_path}")
        if any(r["status"] == "failed" for e in result["sizes"] for r in e["frameworks"]):
            raise RunError("some measurements failed (see above)", code=1)


if __name__ == "__main__":
    main()
