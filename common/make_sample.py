"""Regenerate the bundled Fashion-MNIST sample in common/data/ from the four full files.

    python -m common.make_sample --src PATH [--out common/data]   # PATH: the four full files

The sample is 600 training and 100 test images of each class, drawn without replacement
with a fixed seed and kept in their original file order, written as gzipped IDX files
like the originals (gzip header without name or time, so the bytes depend only on the
data and on zlib). Same full files in, same sample out.
"""

import argparse
import gzip
import io
from pathlib import Path

import numpy as np

from common.cli import main_guard
from common.data import SAMPLE_DIR, load_fashion_mnist

SEED = 3  # fixed forever: changing it changes the bundled sample
PER_CLASS = {"train": 600, "t10k": 100}


def sample_indices(labels: np.ndarray, per_class: int, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picked))  # original order, so the classes stay interleaved


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()  # magic 0x0801 = 2049 labels, 0x0803 = 2051 images


def write_idx_gz(path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as f:
        f.write(idx_bytes(array))
    Path(path).write_bytes(buf.getvalue())


def make_sample(src_dir, out_dir=SAMPLE_DIR) -> None:
    full = load_fashion_mnist(src_dir, download=False, allow_sample=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, (split, images, labels) in enumerate(
        (("train", full.train_images, full.train_labels), ("t10k", full.test_images, full.test_labels))
    ):
        idx = sample_indices(labels, PER_CLASS[split], (SEED, i))
        write_idx_gz(out / f"{split}-images-idx3-ubyte.gz", images[idx])
        write_idx_gz(out / f"{split}-labels-idx1-ubyte.gz", labels[idx])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", required=True, help="folder with the four full Fashion-MNIST files")
    p.add_argument("--out", default=str(SAMPLE_DIR))
    with main_guard():
        args = p.parse_args(argv)
        make_sample(args.src, args.out)
        print(f"wrote the sample to {args.out}")


if __name__ == "__main__":
    main()
