"""Loader throughput: images/s delivered by common.data.Loader at 32, 96 and 224 px, batch 128,
iterating the real training set with a consumer that does nothing (so this is the loader's ceiling).

    python -m benchmarks.loader [--data-dir DIR] [--sizes 32 96 224] [--max-batches N] [--out FILE]

The data come from load_fashion_mnist (--data-dir, else $FASHION_MNIST_DIR, else the cache or a
download, else the bundled sample, and the table says which). The speed goal: >= 5,000
images/s at 224 px on a 2-core machine.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from common.cli import main_guard
from common.data import Loader, load_fashion_mnist
from common.files import check_writable, write_atomic


def measure(images, labels, size, *, batch_size=128, max_batches=None, prefetch=2, normalize=False):
    loader = Loader(images, labels, batch_size=batch_size, resize=size, normalize=normalize, prefetch=prefetch)
    next(iter(loader.epoch(99)))  # warm-up: builds the resize matrices and pages in the images
    n, start = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader.epoch(0)):
        n += len(x)
        if max_batches and i + 1 >= max_batches:
            break
    seconds = time.perf_counter() - start
    return {
        "size": size,
        "images": n,
        "seconds": round(seconds, 4),
        "images_per_s": round(n / seconds, 1),
        "ms_per_batch": round(1000 * seconds * batch_size / n, 3),
    }


def main(argv=None):
    with main_guard():
        _main(argv)


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", metavar="PATH", help="folder with the IDX files (default: as load_fashion_mnist finds them)"
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 96, 224])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-batches", type=int, default=None, help="stop each size early (default: one full epoch)")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--normalize", action="store_true")
    p.add_argument("--out", default="benchmarks/results/loader.json")
    args = p.parse_args(argv)
    check_writable(args.out)  # before the measurements, not after them
    data = load_fashion_mnist(args.data_dir)
    print(data.describe())
    print(f"batch {args.batch_size}, prefetch {args.prefetch}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"{'size':>6} {'images':>8} {'seconds':>8} {'images/s':>10} {'ms/batch':>9}")
    rows = []
    for size in args.sizes:
        r = measure(
            data.train_images,
            data.train_labels,
            size,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            prefetch=args.prefetch,
            normalize=args.normalize,
        )
        rows.append(r)
        print(
            f"{r['size']:>6} {r['images']:>8,} {r['seconds']:>8.2f} "
            f"{r['images_per_s']:>10,.0f} {r['ms_per_batch']:>9.2f}"
        )
    result = {
        "benchmark": "loader",
        "dataset": {"source": data.source, "location": data.location},
        "batch_size": args.batch_size,
        "prefetch": args.prefetch,
        "normalize": args.normalize,
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
