"""How far apart are the three frameworks' logits for the same weights on real Fashion-MNIST images?

    python -m benchmarks.equivalence [--data-dir DIR] [--arch vgg11 vgg11_bn] [--width-ratio 4]
                                     [--image-size 64] [--images 256] [--weights FILE ...] [--out FILE]

Weights: Xavier-initialised in PyTorch (seed 0); for batch-norm models the running statistics are
then set from 8 training batches (cumulative averages), so that inference uses real statistics.
--weights measures saved canonical files instead (e.g. trained ones), each at its own spec.
The canonical tensors go into Gluon and Flax through their converters. Each framework runs the
first --images test images in inference mode, float32; PyTorch in float64 is the reference.
Prints a Markdown table and writes JSON (atomically) to --out.
"""

import argparse
import itertools
import json
import os
import platform
import time
from pathlib import Path

import vgg_gluon.model  # noqa: F401  (before mxnet: restores np.bool)
import vgg_gluon.train
import vgg_gluon.weights

import jax
import mxnet as mx
import numpy as np
import torch

import vgg_flax.model
import vgg_flax.train
import vgg_flax.weights
import vgg_torch.model
import vgg_torch.train
import vgg_torch.weights
from common.arch import make_spec
from common.cli import main_guard
from common.data import Loader, load_fashion_mnist
from common.files import check_writable, write_atomic
from common.weights import read_spec


def torch_weights(spec, train_images):
    torch.manual_seed(0)
    net = vgg_torch.model.vgg(spec)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:
        for m in bns:
            m.momentum = None  # cumulative average over the batches below
        net.train()
        with torch.no_grad():
            for x, _ in itertools.islice(
                Loader(*train_images, batch_size=128, resize=spec.image_size[0], prefetch=0), 8
            ):
                net(torch.from_numpy(x))
        for m in bns:
            m.momentum = 0.1
    return vgg_torch.weights.to_canonical(net)


def logits(spec, tensors, x):
    """Each framework's vgg_X.train.predict (what training's evaluation and the evaluate command
    call), and PyTorch in float64."""
    out = {}
    t = vgg_torch.weights.from_canonical(vgg_torch.model.vgg(spec), tensors).eval()
    out["torch"] = vgg_torch.train.predict(t, x, torch.device("cpu"))
    with torch.no_grad():
        reference = t.double()(torch.from_numpy(x).double()).numpy()
    g = vgg_gluon.weights.from_canonical(vgg_gluon.model.vgg(spec), tensors)
    g.hybridize()
    out["gluon"] = vgg_gluon.train.predict(g, x, mx.cpu())
    f = vgg_flax.weights.from_canonical(vgg_flax.model.vgg(spec), tensors)
    f.eval()
    out["flax"] = vgg_flax.train.predict(f, x, jax.devices()[0])
    return out, reference


def compare(a, b):
    return {
        "max_abs_diff": float(np.abs(a - b).max()),
        "max_abs_logit": float(np.abs(b).max()),
        "relative": float(np.abs(a - b).max() / np.abs(b).max()),
        "argmax_disagreements": int((a.argmax(1) != b.argmax(1)).sum()),
    }


def main(argv=None):
    with main_guard():
        _main(argv)


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-dir", metavar="PATH", help="folder with the IDX files (default: as load_fashion_mnist finds them)"
    )
    p.add_argument("--arch", nargs="+", default=["vgg11", "vgg11_bn"])
    p.add_argument("--width-ratio", type=int, default=4)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--weights", nargs="+", default=[], help="canonical .safetensors files to measure instead of --arch")
    p.add_argument("--out", default="benchmarks/results/equivalence.json")
    args = p.parse_args(argv)
    check_writable(args.out)  # before the measurements, not after them
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    jax.config.update("jax_default_matmul_precision", "float32")
    data = load_fashion_mnist(args.data_dir)
    models = []  # (label, spec, canonical tensors)
    for path in args.weights:
        spec, tensors, _ = read_spec(path)
        models.append((f"{spec.name} ({Path(path).name})", spec, tensors))
    for arch in [] if args.weights else args.arch:
        spec = make_spec(arch, width_ratio=args.width_ratio, image_size=args.image_size)
        models.append((spec.name, spec, torch_weights(spec, (data.train_images, data.train_labels))))
    print(f"{data.describe()}; the first {args.images} test images")
    print(
        f"torch {torch.__version__}, MXNet {mx.__version__}, JAX {jax.__version__}, CPU float32 "
        f"(float64 torch as reference)\n"
    )
    print("| model | px | pair | max abs logit diff | max abs logit | relative | argmax disagreements |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for label, spec, tensors in models:
        x, _ = next(
            iter(
                Loader(
                    data.test_images[: args.images],
                    data.test_labels[: args.images],
                    batch_size=args.images,
                    resize=spec.image_size[0],
                    shuffle=False,
                    prefetch=0,
                )
            )
        )
        out, reference = logits(spec, tensors, x)
        pairs = [(a, b, out[a], out[b]) for a, b in itertools.combinations(out, 2)]
        pairs += [(a, "torch float64", out[a], reference) for a in out]
        for a, b, va, vb in pairs:
            r = dict(model=label, image_size=spec.image_size[0], pair=f"{a} vs {b}", **compare(va, vb))
            rows.append(r)
            print(
                f"| {r['model']} | {r['image_size']} | {r['pair']} | "
                f"{r['max_abs_diff']:.2e} | {r['max_abs_logit']:.3g} | "
                f"{r['relative']:.1e} | {r['argmax_disagreements']} / {len(x)} |"
            )
    result = {
        "benchmark": "equivalence",
        "dataset": {"source": data.source, "location": data.location},
        "images": args.images,
        "versions": {"torch": torch.__version__, "mxnet": mx.__version__, "jax": jax.__version__},
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": rows,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out_path, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
