"""VGG in MXNet Gluon."""
import numpy as np

# MXNet 1.9.1, the last release, still uses the alias `np.bool` that NumPy 1.24
# removed. This is the one place that restores it, before anything imports mxnet.
np.bool = bool

# Without OMP_NUM_THREADS, MXNet gives each operator half the cores (it assumes two hyperthreads
# a core), one on a 2-core machine. All of them, unless the user said otherwise: VGG-11/4 training
# on 2 cores, 507 -> 931 examples/s at 32 px (benchmarks/throughput.py --env MXNET_OMP_MAX_THREADS=2).
import os  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    os.environ.setdefault("MXNET_OMP_MAX_THREADS", str(len(os.sched_getaffinity(0))))
