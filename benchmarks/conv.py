"""One 3x3 convolution, forward and forward + backward, in each framework's kernel: why the
frameworks' VGG throughputs differ on a CPU (torch and MXNet call oneDNN, XLA its own Eigen-based
convolution).

    python -m benchmarks.conv [--batch 128] [--size 96] [--channels 16 32] [--repeats 3]

Each framework runs in its own process, as in benchmarks.throughput. GFLOP/s count 2 x k^2 x
C_in x C_out x H x W x N per convolution; the backward pass is two of them (input and weight
gradients), so forward + backward is 3x the forward's work.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

KINDS = ("torch", "torch_channels_last", "mxnet", "jax")


def _best(fn, repeats):
    fn()  # warm-up: compilation, allocation, oneDNN primitive creation
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def measure(kind, n, s, cin, cout, repeats):
    import numpy as np

    x = np.random.default_rng(0).random((n, cin, s, s), dtype=np.float32)
    w = np.random.default_rng(1).random((cout, cin, 3, 3), dtype=np.float32)
    if kind.startswith("torch"):
        import torch
        import torch.nn.functional as F

        fmt = torch.channels_last if kind == "torch_channels_last" else torch.contiguous_format
        tx = torch.from_numpy(x).contiguous(memory_format=fmt).requires_grad_()
        tw = torch.from_numpy(w).contiguous(memory_format=fmt).requires_grad_()
        fwd = lambda: F.conv2d(tx, tw, padding=1)

        def both():
            F.conv2d(tx, tw, padding=1).sum().backward()

        with torch.no_grad():
            t_fwd = _best(fwd, repeats)
        return t_fwd, _best(both, repeats)
    if kind == "mxnet":
        import vgg_gluon  # noqa: F401  (restores np.bool before mxnet is imported)

        import mxnet as mx

        mx_, mw = mx.nd.array(x), mx.nd.array(w)
        mx_.attach_grad()
        mw.attach_grad()
        conv = lambda: mx.nd.Convolution(mx_, mw, kernel=(3, 3), pad=(1, 1), num_filter=cout, no_bias=True)

        def both():
            with mx.autograd.record():
                y = conv().sum()
            y.backward()
            mw.grad.wait_to_read()

        return _best(lambda: conv().wait_to_read(), repeats), _best(both, repeats)
    import jax
    import jax.numpy as jnp

    jx = jnp.asarray(x.transpose(0, 2, 3, 1))  # NHWC, HWIO: Flax's layout
    jw = jnp.asarray(w.transpose(2, 3, 1, 0))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    fwd = jax.jit(conv)
    grads = jax.jit(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))
    return (
        _best(lambda: fwd(jx, jw).block_until_ready(), repeats),
        _best(lambda: jax.block_until_ready(grads(jx, jw)), repeats),
    )


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=96, help="input height and width (default 96)")
    p.add_argument("--channels", type=int, nargs=2, default=[16, 32], metavar=("IN", "OUT"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    n, s, (cin, cout) = args.batch, args.size, args.channels
    if args.worker:
        print(json.dumps(measure(args.worker, n, s, cin, cout, args.repeats)))
        return
    flops = 2 * 9 * cin * cout * s * s * n
    print(f"3x3 convolution, batch {n}, {cin} -> {cout} channels, {s}x{s}: {flops / 1e9:.1f} GFLOP forward")
    print(f"{'':22} {'forward GFLOP/s':>16} {'fwd+bwd GFLOP/s':>16}")
    for kind in KINDS:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.conv", *(argv or sys.argv[1:]), "--worker", kind],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            print(f"{kind:22} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        t_fwd, t_both = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind:22} {flops / t_fwd / 1e9:>16.1f} {3 * flops / t_both / 1e9:>16.1f}")


if __name__ == "__main__":
    main()
