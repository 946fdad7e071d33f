"""Training and inference throughput of vgg_torch, vgg_gluon and vgg_flax side by side, with
the peers a user would pick instead (torchvision's VGG, the Gluon model zoo's VGG) through the
same loop, against the machine's matrix-multiply rate:

    python -m benchmarks.throughput [--sizes 32 96 224] [--device cpu|gpu] [--precision float32|bfloat16]
                                    [--extra NAME=PYTHON:FRAMEWORK ...]

For each image size and framework, in a process of its own (benchmarks/workers.py):
  compute     synthetic batches already on the device: the framework's ceiling
  end to end  common.data.Loader on Fashion-MNIST (resizing, prefetch thread), host-to-device copy
for training (the project's train_step: forward, backward, SGD update) and inference (predict).
examples/s are timed steps x batch / their wall time, after warm-up steps; the first step
(compilation, graph building, allocation) is reported apart. Training FLOPs are 3 x the forward's.
After each of the three, its train script (python -m vgg_X.train) runs as many steps of the same
configuration (a one-batch test set, so its evaluation is short), and the examples/s it reports
stand beside the benchmark's end-to-end training: where they are more than 20% apart the step the
benchmark times is not the one a training run takes, and the output and the JSON say so.
--extra measures a framework once more under another interpreter (another virtual environment,
hence other library versions), as a row of its own named NAME, e.g. two JAX/Flax releases in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import FRAMEWORKS, measure
from common import PACKAGES as OURS
from common.arch import flops_per_example, make_spec, parse_arch
from common.cli import add_cpu_workarounds_arg, main_guard
from common.data import SAMPLE_DIR, load_fashion_mnist, sample_dataset
from common.errors import ArchError, RunError, UsageError
from common.files import check_writable, write_json

from .workers import PACKAGES, train_flags

PEERS = ("torchvision", "gluon_zoo")
ALIASES = {**dict(zip(FRAMEWORKS, OURS)), "zoo": "gluon_zoo"}  # torch -> vgg_torch
CROSS_CHECK = 0.2  # the train script's examples/s within 20% of the benchmark's end-to-end training
GOALS = {"vs_fastest": 0.8, "vs_torchvision": 1.0, "end_to_end": 0.95, "matmul_224": 0.5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--arch", default="vgg11", type=parse_arch, help="a table name or d2l's conv_arch tuples (default vgg11)"
    )
    p.add_argument("--width-ratio", type=int, default=4, help="divide every block's channels by this (default 4)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96, 224], help="image sizes (default 32 96 224)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the train scripts' --precision, passed to their own step (bfloat16: mixed precision, the "
        "parameters float32; docs/training.md)",
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument(
        "--frameworks", nargs="+", default=[*OURS, *PEERS], help=f"any of {', '.join(OURS + PEERS)} (default: all)"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed steps per measurement; 0 (default): as many as fit in --seconds (at least one a round)",
    )
    p.add_argument("--seconds", type=float, default=4.0, help="time per measurement when --steps is 0 (default 4)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="compute-only and end-to-end alternate in this many chunks each (default 2)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure everything this many times, one sweep after another, and keep each figure's "
        "best (for a shared machine; default 1)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps first (default 2); the first is reported, and their overhead",
    )
    p.add_argument(
        "--no-cross-check",
        dest="cross_check",
        action="store_false",
        help="do not run the train scripts beside the benchmark (their examples/s against its own)",
    )
    p.add_argument("--data-dir", metavar="PATH", help="Fashion-MNIST folder (default: as load_fashion_mnist finds it)")
    p.add_argument("--prefetch", type=int, default=2, help="loader batches prepared ahead (default 2, the Loader's)")
    p.add_argument("--matmul-sizes", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--matmul-repeats", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per worker process")
    p.add_argument("--out", default="benchmarks/results/throughput.json")
    p.add_argument(
        "--report", metavar="JSON", help="measure nothing: print the table and goals of an earlier run's JSON"
    )
    g = p.add_argument_group("options under test (off by default: what the train scripts do)")
    g.add_argument(
        "--torch-memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="torch: the model's memory format (vgg_torch.train: channels_last); torchvision's VGG gets the same",
    )
    g.add_argument("--torch-compile", action="store_true", help="torch: torch.compile the model")
    g.add_argument(
        "--gluon-hybridize",
        choices=("static", "plain", "off"),
        default="static",
        help="Gluon: hybridize(static_alloc=True, static_shape=True) (default, as vgg_gluon.train), "
        "plain hybridize(), or imperative",
    )
    g.add_argument(
        "--flax-donate", action="store_true", help="Flax: donate the model and optimiser state to the jitted step"
    )
    add_cpu_workarounds_arg(g)
    g.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="[FRAMEWORK:]KEY=VALUE",
        help="environment for the workers (all, or one framework's, or one --extra NAME's), e.g. "
        "--env vgg_flax:XLA_FLAGS=--xla_cpu_use_thunk_runtime=false; repeatable",
    )
    g.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=PYTHON:FRAMEWORK",
        help="also measure FRAMEWORK (one of --frameworks' choices) with the interpreter PYTHON (e.g. "
        "another virtual environment's bin/python, with other library versions), reported as the row "
        "NAME, after the --frameworks rows; e.g. --extra flax_old=/path/to/old/.venv/bin/python:flax. "
        "It runs this checkout's code; its row does not count as the fastest. Repeatable",
    )
    args = p.parse_args(argv)
    args.frameworks = list(dict.fromkeys(ALIASES.get(f, f) for f in args.frameworks))
    unknown = [f for f in args.frameworks if f not in OURS + PEERS]
    if unknown:
        raise UsageError(f"--frameworks: unknown {', '.join(unknown)}; choose from {', '.join(OURS + PEERS)}")
    # (row name, framework, interpreter) of every measurement of a sweep
    args.runs = [(fw, fw, sys.executable) for fw in args.frameworks]
    for item in args.extra:
        name, eq, rest = item.partition("=")
        python, colon, fw = rest.rpartition(":")
        fw = ALIASES.get(fw, fw)
        if not (eq and colon and name and python and fw):
            raise UsageError(
                f"--extra {item!r}: write NAME=PYTHON:FRAMEWORK, e.g. flax_old=/path/to/.venv/bin/python:flax"
            )
        if fw not in OURS + PEERS:
            raise UsageError(f"--extra {item!r}: unknown framework {fw!r}; choose from {', '.join(OURS + PEERS)}")
        if name in OURS + PEERS or name in ALIASES or name in (r[0] for r in args.runs):
            raise UsageError(f"--extra {item!r}: the name {name!r} is taken; give the row another name")
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            raise UsageError(f"--extra {item!r}: no interpreter at {python}; give the path of a Python executable")
        args.runs.append((name, fw, python))
    for name, v in (
        ("--batch-size", args.batch_size),
        ("--warmup", args.warmup),
        ("--seconds", args.seconds),
        ("--rounds", args.rounds),
        ("--repeat", args.repeat),
    ):
        if v <= 0:
            raise UsageError(f"{name} must be positive, got {v}")
    if args.steps < 0 or args.prefetch < 0:
        raise UsageError("--steps and --prefetch must be 0 or more")
    try:
        for s in args.sizes:
            make_spec(args.arch, image_size=s, width_ratio=args.width_ratio)
    except ArchError as e:
        raise UsageError(str(e).replace("image_size", "--sizes")) from None
    args.env_by = {}
    for item in args.env:
        names = OURS + PEERS + tuple(r[0] for r in args.runs)
        target, _, kv = item.partition(":") if item.split(":", 1)[0] in names else ("*", "", item)
        key, eq, value = kv.partition("=")
        if not eq or not key:
            raise UsageError(f"--env {item!r}: write KEY=VALUE or FRAMEWORK:KEY=VALUE")
        args.env_by.setdefault(target, {})[key] = value
    return args


def run_worker(cfg: dict, env: dict, timeout: float, python: str = sys.executable) -> dict:
    """Measure one (framework, size) in a fresh interpreter (`python`); a crash becomes a 'failed' row."""
    package = [PACKAGES[cfg["framework"]]] if cfg["framework"] in PACKAGES else []
    result = measure.run_worker([python, "-m", "benchmarks.workers"], cfg, timeout, env, args=package)
    result.update(env=env)
    return result


# the options under test that the train scripts do not have, by the framework they change: with any
# of them changed, the benchmark and the train script measure different steps
TRAIN_SCRIPT_DEFAULTS = {
    "vgg_torch": {"torch_memory_format": "channels_last"},
    "vgg_gluon": {"gluon_hybridize": "static"},
    "vgg_flax": {"flax_donate": False},
}


def train_data(data, batch_size: int, folder: Path) -> str:
    """A Fashion-MNIST folder for the train scripts' cross-check: the training files of `data`'s
    folder (links), and a test set of one batch, so that the script's evaluation takes one step."""
    from common.make_sample import write_idx_gz

    for f in Path(data.location).iterdir():
        if f.name.startswith("train-"):
            (folder / f.name).symlink_to(f.resolve())
    write_idx_gz(folder / "t10k-images-idx3-ubyte.gz", data.test_images[:batch_size])
    write_idx_gz(folder / "t10k-labels-idx1-ubyte.gz", data.test_labels[:batch_size])
    return str(folder)


def cross_check(cfg: dict, row: dict, data_dir: str, env: dict, timeout: float, python: str) -> dict:
    """Run the train script of row's framework with the benchmark's configuration for as many steps
    as its end-to-end training timed, plus the first (which the script leaves out of its figure, as
    it carries compilation); return its examples/s beside the benchmark's end-to-end training."""
    changed = [k for k, v in TRAIN_SCRIPT_DEFAULTS[cfg["framework"]].items() if cfg[k] != v]
    if changed:
        return {"status": "skipped", "message": f"options under test the train scripts lack: {', '.join(changed)}"}
    steps = max(3, row["train"]["end_to_end"]["steps"] + 1)
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            "-m",
            f"{cfg['framework']}.train",
            *train_flags(cfg, cfg["size"], compile=cfg["torch_compile"]),  # the worker's own configuration
            "--epochs=1",
            f"--max-steps={steps}",
        ]
        load = os.getloadavg()[0]
        try:
            proc = subprocess.run(
                [python, *command, f"--data-dir={data_dir}", f"--out={tmp}/run"],
                cwd=measure.ROOT,
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            epoch = json.loads(Path(tmp, "run", "metrics.json").read_text())["epochs"][0]
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, IndexError) as e:
            tail = getattr(locals().get("proc"), "stderr", "") or str(e)
            return {"status": "failed", "message": " | ".join(tail.strip().splitlines()[-3:])}
    bench = row["train"]["end_to_end"]["examples_per_s"]
    return {
        "status": "ok",
        "command": "python " + " ".join(command),
        "steps": steps,
        "examples_per_s": epoch["examples_per_sec"],
        "load_before": load,
        **verdict(epoch["examples_per_sec"], bench),
    }


def verdict(script: float, bench: float) -> dict:
    """The train script's examples/s against the benchmark's end-to-end training."""
    ratio = script / bench
    return {"benchmark_examples_per_s": bench, "script_vs_benchmark": ratio, "agrees": abs(ratio - 1) <= CROSS_CHECK}


def best_of(samples: list[dict]) -> dict:
    """One row from --repeat samples of a (framework, size): each throughput is its best sample's
    (on a shared machine the best is the one least disturbed by other processes), the rest comes
    from the sample with the best compute-only training; every sample's figures are kept."""
    ok = [r for r in samples if r["status"] == "ok"]
    if not ok:
        return samples[-1]
    row = json.loads(json.dumps(max(ok, key=lambda r: r["train"]["compute"]["examples_per_s"])))
    row["samples"] = []
    for r in ok:
        row["samples"].append(
            {
                "load_before": r["load_before"],
                **{
                    f"{ph}.{m}": r[ph][m]["examples_per_s"]
                    for ph in ("train", "infer")
                    for m in ("compute", "end_to_end")
                },
            }
        )
    for ph in ("train", "infer"):
        for m in ("compute", "end_to_end"):
            row[ph][m]["examples_per_s"] = max(s[f"{ph}.{m}"] for s in row["samples"])
    checks = [r["cross_check"] for r in ok if r.get("cross_check", {}).get("status") == "ok"]
    if checks:  # the best of each, as the benchmark's figures
        row["cross_check"] = {
            **max(checks, key=lambda c: c["examples_per_s"]),
            **verdict(max(c["examples_per_s"] for c in checks), row["train"]["end_to_end"]["examples_per_s"]),
        }
    return row


def ratios(rows: list[dict], matmul: dict) -> list[dict]:
    """Per size: each row against the fastest of the three frameworks, end to end against
    compute only, achieved GFLOP/s against the matmul rate (in the run's precision)."""
    out = []
    for size in sorted({r["size"] for r in rows}):
        ok = [r for r in rows if r["size"] == size and r["status"] == "ok"]
        best = {
            ph: max((r[ph]["compute"]["examples_per_s"] for r in ok if r["framework"] in OURS), default=None)
            for ph in ("train", "infer")
        }
        for r in ok:
            q = {"framework": r["framework"], "size": size}
            for ph, flops in (("train", r["train_flops"]), ("infer", r["forward_flops"])):
                c = r[ph]["compute"]["examples_per_s"]
                # within each sample, where the two alternated under the same load; then averaged
                e2e = sum(x[f"{ph}.end_to_end"] / x[f"{ph}.compute"] for x in r["samples"]) / len(r["samples"])
                gflops = c * flops / 1e9
                q.update(
                    {
                        f"{ph}_vs_fastest": c / best[ph] if best[ph] else None,
                        f"{ph}_end_to_end_vs_compute": e2e,
                        f"{ph}_gflops": gflops,
                        f"{ph}_vs_matmul": gflops / matmul["precision_gflops"] if matmul else None,
                    }
                )
            out.append(q)
    return out


def goals(rows: list[dict], qs: list[dict]) -> dict:
    """The speed goals (GOALS), each with its measured values and whether it holds (None: not measured)."""

    def q(fw, size):
        return next((x for x in qs if x["framework"] == fw and x["size"] == size), None)

    sizes = sorted({r["size"] for r in rows})
    g = {}
    vals = {f"{fw}@{s}": q(fw, s)["train_vs_fastest"] for s in sizes for fw in OURS if q(fw, s)}
    g["every framework trains at >= 0.8x the fastest"] = (vals, GOALS["vs_fastest"])
    vals = {}
    for s in sizes:
        a, b = q("vgg_torch", s), q("torchvision", s)
        if a and b:
            vals[f"vgg_torch/torchvision@{s}"] = a["train_gflops"] / b["train_gflops"]
    g["vgg_torch trains at >= torchvision's VGG"] = (vals, GOALS["vs_torchvision"])
    vals = {f"{fw}@{s}": q(fw, s)["train_end_to_end_vs_compute"] for s in sizes for fw in OURS if q(fw, s)}
    g["end-to-end training >= 0.95 of compute-only"] = (vals, GOALS["end_to_end"])
    vals = {f"{fw}@224": q(fw, 224)["train_vs_matmul"] for fw in OURS if q(fw, 224) and q(fw, 224)["train_vs_matmul"]}
    g["at 224 px, training >= 50% of the matmul rate"] = (vals, GOALS["matmul_224"])
    return {
        name: {"target": t, "values": v, "holds": all(x >= t for x in v.values()) if v else None}
        for name, (v, t) in g.items()
    }


def report(result: dict) -> str:
    """Add the ratios and goals to a result; return the table and the goals as text."""
    rows, matmul, cfg = result["results"], result["matmul"], result["config"]
    result["ratios"] = qs = ratios(rows, matmul)
    result["goals"] = gs = goals(rows, qs)
    lines = [
        table(rows, qs, matmul, cfg),
        "\nx best: against the fastest of vgg_torch, vgg_gluon, vgg_flax; e2e/cmp: end to end against compute "
        "only (within each sample, where they alternate; averaged over samples); x mm: achieved GFLOP/s against "
        "the matmul rate; warm-up s: train/infer warm-up time beyond steady state (compilation, graph building, "
        "allocation); load: 1-minute load average before; script ex/s: the train script's own figure for the same "
        "configuration, x e2e: against the benchmark's end-to-end training (APART: more than 20%)",
    ]
    if cfg.get("extra"):  # rows measured under other interpreters: which library versions each row ran
        seen = {r["framework"]: r for r in rows if r["status"] == "ok"}
        lines += [
            f"{name}: "
            + ", ".join(f"{k} {v}" for k, v in r["versions"].items())
            + (f" ({r['python']})" if "python" in r else "")
            for name, r in seen.items()
        ]
    result["cross_check"] = cc = cross_checks(rows)
    if cc["values"]:
        vals = ", ".join(f"{k} {v:.2f}" for k, v in cc["values"].items())
        lines.append(
            "cross-check: the train scripts' own examples/s against the benchmark's end-to-end training: "
            + ("all within 20%" if cc["agrees"] else f"MORE THAN 20% APART at {', '.join(cc['apart'])}")
            + f" ({vals})"
        )
    for name, g in gs.items():
        state = {True: "holds", False: "FAILS", None: "not measured"}[g["holds"]]
        vals = ", ".join(f"{k} {v:.2f}" for k, v in g["values"].items())
        lines.append(f"goal: {name}: {state}" + (f" ({vals})" if vals else ""))
    return "\n".join(lines)


def cross_checks(rows: list[dict]) -> dict:
    """Every row's cross-check ratio (train script / benchmark), and where they are more than 20% apart."""
    values = {
        f"{r['framework']}@{r['size']}": r["cross_check"]["script_vs_benchmark"]
        for r in rows
        if r.get("cross_check", {}).get("status") == "ok"
    }
    apart = [k for k, v in values.items() if abs(v - 1) > CROSS_CHECK]
    return {"tolerance": CROSS_CHECK, "values": values, "apart": apart, "agrees": not apart if values else None}


def table(rows, qs, matmul, cfg) -> str:
    lines = []
    for size in sorted({r["size"] for r in rows}):
        spec = make_spec(cfg["arch"], image_size=size, width_ratio=cfg["width_ratio"])
        lines.append(
            f"\n{size} px: {spec.name}, batch {cfg['batch_size']}, {cfg['precision']}, {cfg['device']}; forward "
            f"{flops_per_example(spec) / 1e9:.3f} GFLOP/example"
            + (f"; matmul {matmul['precision_gflops']:.0f} GFLOP/s" if matmul else "")
        )
        lines.append(
            f"{'':12} {'train ex/s':>10} {'x best':>6} {'e2e/cmp':>7} {'GFLOP/s':>7} {'x mm':>5} | "
            f"{'infer ex/s':>10} {'x best':>6} {'e2e/cmp':>7} {'x mm':>5} | "
            f"{'warm-up s':>11} {'peak RSS MB':>11} {'load':>4} | {'script ex/s':>11} {'x e2e':>5}"
        )
        for r in (r for r in rows if r["size"] == size):
            if r["status"] != "ok":
                lines.append(f"{r['framework']:12} {r['status']}: {r['message']}")
                continue
            x = next(x for x in qs if x["framework"] == r["framework"] and x["size"] == size)
            f = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"
            lines.append(
                f"{r['framework']:12} {r['train']['compute']['examples_per_s']:>10,.0f} "
                f"{f(x['train_vs_fastest'], 6, 2)} "
                f"{x['train_end_to_end_vs_compute']:>7.2f} {x['train_gflops']:>7.0f} {f(x['train_vs_matmul'], 5, 2)} | "
                f"{r['infer']['compute']['examples_per_s']:>10,.0f} {f(x['infer_vs_fastest'], 6, 2)} "
                f"{x['infer_end_to_end_vs_compute']:>7.2f} {f(x['infer_vs_matmul'], 5, 2)} | "
                f"{r['train']['compute']['warmup_overhead_s']:>5.1f}/"
                f"{r['infer']['compute']['warmup_overhead_s']:<5.1f} "
                f"{r['peak_rss_mb']:>11,.0f} {r['load_before']:>4.1f} | "
                + (
                    f"{c['examples_per_s']:>11,.0f} {c['script_vs_benchmark']:>5.2f}"
                    + ("" if c["agrees"] else " APART")
                    if (c := r.get("cross_check", {})).get("status") == "ok"
                    else f"{c.get('status', '-'):>11}"
                )
            )
    return "\n".join(lines)


def read_result(path, flag: str = "") -> dict:
    """A result that this benchmark wrote (--out), or a RunError that says what is wrong with the file;
    flag names the option that gave the path in that message."""
    try:
        result = json.loads(Path(path).read_text())
        if (
            not isinstance(result, dict)
            or result.get("benchmark") != "throughput"
            or not isinstance(result.get("results"), list)
        ):
            raise ValueError("it holds no benchmarks.throughput result")
        return result
    except (OSError, ValueError) as e:
        raise RunError(
            f"{flag + ' ' if flag else ''}{path}: cannot read a throughput result there ({e}); give what "
            "`python -m benchmarks.throughput --out FILE` wrote"
        ) from None


def main(argv=None):
    with main_guard():
        _main(argv)


def _main(argv):
    args = parse_args(argv)
    if args.report:
        result = read_result(args.report, "--report")
        try:
            text = report(result)
        except KeyError as e:  # a result with a part missing
            raise RunError(f"--report {args.report}: cannot read a throughput result there (no {e})") from None
        machine = measure.describe(result["machine"], result["matmul"])
        print(f"{result['command']}  ({result['time']})\n{machine}\n{text}")
        return
    check_writable(args.out)  # before the measurements, not after them
    load_start = os.getloadavg()
    if args.device == "cpu" and load_start[0] > 0.5:
        print(
            f"note: load average {load_start[0]:.2f} (> 0.5): other processes share the cores, numbers will be low "
            "and noisy",
            file=sys.stderr,
        )
    data = (
        load_fashion_mnist(args.data_dir) if not args.data_dir or Path(args.data_dir).resolve() != SAMPLE_DIR else None
    )
    data_dir, source = (data.location, data.source) if data else (str(SAMPLE_DIR), "sample")
    data = data or sample_dataset()
    scratch = tempfile.TemporaryDirectory()  # the cross-check's data folder
    script_data = train_data(data, args.batch_size, Path(scratch.name)) if args.cross_check else None
    base = {
        "arch": args.arch,
        "width_ratio": args.width_ratio,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "device": args.device,
        "steps": args.steps,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "prefetch": args.prefetch,
        "data_dir": data_dir,
        "matmul_sizes": args.matmul_sizes,
        "matmul_repeats": args.matmul_repeats,
        "torch_memory_format": args.torch_memory_format,
        "torch_compile": args.torch_compile,
        "gluon_hybridize": args.gluon_hybridize,
        "flax_donate": args.flax_donate,
        "cpu_workarounds": args.cpu_workarounds,
    }
    extras = {name: {"framework": fw, "python": python} for name, fw, python in args.runs[len(args.frameworks) :]}
    started = time.time()

    def measure_matmul():
        print(
            f"matmul rate ({', '.join(map(str, args.matmul_sizes))} squares, best of {args.matmul_repeats})...",
            end=" ",
            flush=True,
        )
        m = run_worker({**base, "framework": "matmul"}, args.env_by.get("*", {}), args.timeout)
        if m["status"] != "ok":
            raise RunError(f"matmul measurement {m['status']}: {m['message']}")
        print(f"float32 {m['float32_gflops']:.0f} GFLOP/s, bfloat16 {m['bfloat16_gflops']:.0f} GFLOP/s")
        return m

    samples, matmuls = [], []
    print(measure.describe(measure.machine(load_start)).split("; load")[0], flush=True)
    for rep in range(args.repeat):
        matmuls.append(measure_matmul())  # it varies with the load too: the best sweep's is kept
        for size in args.sizes:
            for name, fw, python in args.runs:
                print(
                    f"{size} px {name}{f' ({rep + 1}/{args.repeat})' if args.repeat > 1 else ''}...",
                    end=" ",
                    flush=True,
                )
                env = {**args.env_by.get("*", {}), **args.env_by.get(fw, {}), **args.env_by.get(name, {})}
                r = run_worker({**base, "framework": fw, "size": size}, env, args.timeout, python)
                if name != fw:
                    r.update(framework=name, measures=fw, python=python)
                samples.append(r)
                print(
                    f"train {r['train']['compute']['examples_per_s']:,.0f} ex/s, infer "
                    f"{r['infer']['compute']['examples_per_s']:,.0f} ex/s"
                    if r["status"] == "ok"
                    else f"{r['status']}: {r['message']}",
                    end="",
                    flush=True,
                )
                if script_data and fw in OURS and r["status"] == "ok":
                    c = r["cross_check"] = cross_check(
                        {**base, "framework": fw, "size": size}, r, script_data, env, args.timeout, python
                    )
                    print(
                        f"; its train script {c['examples_per_s']:,.0f} ex/s against end to end "
                        f"{c['benchmark_examples_per_s']:,.0f} ({c['script_vs_benchmark']:.2f}x"
                        + ("" if c["agrees"] else ", MORE THAN 20% APART")
                        + ")"
                        if c["status"] == "ok"
                        else f"; its train script: {c['status']} ({c['message']})",
                        end="",
                    )
                print(flush=True)
    rows = [
        best_of([r for r in samples if r["framework"] == fw and r["size"] == size])
        for size in args.sizes
        for fw in [r[0] for r in args.runs]
    ]

    result = {
        "benchmark": "throughput",
        "command": "python -m benchmarks.throughput " + " ".join(argv or sys.argv[1:]),
        "config": {k: v for k, v in base.items() if k != "data_dir"}
        | {
            "sizes": args.sizes,
            "frameworks": args.frameworks,
            "repeat": args.repeat,
            "env": args.env_by,
            "extra": extras,
        },
        "dataset": {"source": source, "location": data_dir},
        "machine": measure.machine(load_start),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.time() - started,
        "matmul": max(matmuls, key=lambda m: m["precision_gflops"]),
        "results": rows,
    }
    scratch.cleanup()
    text = report(result)
    print(f"\n{measure.describe(result['machine'], result['matmul'])}{text}")
    out = Path(args.out)
    write_json(out, result)
    print(f"wrote {out}")
    if any(r.get("cross_check", {}).get("status") == "failed" for r in rows):
        print("note: some train scripts failed to run (see above)", file=sys.stderr)
    if any(r["status"] == "failed" for r in rows):
        raise RunError("some measurements failed (see above)", code=1)


if __name__ == "__main__":
    main()
