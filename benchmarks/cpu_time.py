"""CPU time of one training step on one thread: A/B comparisons that hold on a shared machine.

    python -m benchmarks.cpu_time [--size 96] [--precision float32|bfloat16] [--frameworks ...]
                                  [--flax-variant default none KERNEL_GRAD_SLICE=0 ...] [--steps 4]

benchmarks.throughput measures wall-clock examples/s, which swings by 25% and more when other
processes share the cores. The CPU time that one single-threaded step consumes varies far less, so
two ways of computing the same step can be told apart on a busy machine. Each (framework, variant)
runs in a process of its own, on one thread (OMP_NUM_THREADS=1, XLA's intra-op pool of 1, MXNet's
NaiveEngine), on the train scripts' own step (benchmarks.workers), VGG-11/4, batch 128, synthetic
batches; it reports the least and the median CPU time of --steps steps after two untimed ones.

Flax variants: `default` (what the train script does on a CPU), `none` (--no-cpu-workarounds), or
NAME=VALUE[,NAME=VALUE...], which sets vgg_flax.xla_cpu.NAME (ONE_CHANNEL, KERNEL_GRAD_SLICE,
IN_FLOAT32) to the Python value, to measure one workaround against the others.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import PACKAGES
from common.cli import main_guard
from common.errors import RunError
from common.files import check_writable, write_json

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MXNET_CPU_WORKER_NTHREADS": "1",
    "MXNET_ENGINE_TYPE": "NaiveEngine",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}


def measure(fw: str, size: int, precision: str, variant: str, steps: int) -> dict:
    import numpy as np

    from benchmarks import workers
    from common.training import keep_freed_memory

    keep_freed_memory()
    cfg = dict(
        arch="vgg11",
        width_ratio=4,
        batch_size=128,
        precision=precision,
        device="cpu",
        torch_memory_format="channels_last",
        torch_compile=False,
        gluon_hybridize="static",
        flax_donate=False,
        cpu_workarounds=variant != "none",
    )
    if fw == "vgg_flax" and "=" in variant:
        import vgg_flax.xla_cpu as xla_cpu

        for item in variant.split(","):
            name, value = item.split("=", 1)
            if not hasattr(xla_cpu, name):
                raise RunError(f"vgg_flax.xla_cpu has no {name}")
            setattr(xla_cpu, name, ast.literal_eval(value))
    cls, peer = workers.RUNNERS[fw]
    r = cls(cfg, size, peer=peer)
    rng = np.random.default_rng(0)
    xd, yd = r.to_device(rng.random((128, 1, size, size), dtype=np.float32), rng.integers(0, 10, 128))
    r.mode(True)
    for _ in range(2):
        r.wait(r.train_step(xd, yd))
    times = []
    for _ in range(steps):
        t = time.process_time()
        r.wait(r.train_step(xd, yd))
        times.append(time.process_time() - t)
    return {
        "framework": fw,
        "variant": variant,
        "size": size,
        "precision": precision,
        "cpu_ms_min": min(times) * 1e3,
        "cpu_ms_median": sorted(times)[len(times) // 2] * 1e3,
    }


def main(argv=None):
    with main_guard():
        _main(argv)


def _main(argv):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cpu_time",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--frameworks", nargs="+", default=list(PACKAGES))
    p.add_argument("--flax-variant", nargs="+", default=["default"], help="see above (default: default)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1, help="measure everything this many times, in turn")
    p.add_argument("--out", default="benchmarks/results/cpu_time.json")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0], args.size, args.precision, args.worker[1], args.steps)))
        return
    check_writable(args.out)  # before the measurements, not after them
    rows = []
    for _ in range(args.repeat):
        for fw in args.frameworks:
            for variant in args.flax_variant if fw == "vgg_flax" else ["default"]:
                proc = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "benchmarks.cpu_time",
                        f"--size={args.size}",
                        f"--precision={args.precision}",
                        f"--steps={args.steps}",
                        "--worker",
                        fw,
                        variant,
                    ],
                    cwd=ROOT,
                    env={**os.environ, **ONE_THREAD},
                    capture_output=True,
                    text=True,
                )
                if proc.returncode:
                    raise RunError(f"{fw} {variant}: {(proc.stderr or proc.stdout).strip().splitlines()[-1]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["load_average"] = os.getloadavg()[0]
                print(
                    f"{fw:10} {variant:24} {args.size} px {args.precision}: {row['cpu_ms_min']:7.0f} ms CPU per step "
                    f"(median {row['cpu_ms_median']:.0f})",
                    flush=True,
                )
                rows.append(row)
    write_json(
        Path(args.out),
        {
            "benchmark": "cpu_time",
            "command": "python -m benchmarks.cpu_time " + " ".join(argv or sys.argv[1:]),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "results": rows,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
