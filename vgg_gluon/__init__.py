"""VGG in MXNet Gluon."""
import numpy as np

# MXNet 1.9.1, the last release, still uses the alias `np.bool` that NumPy 1.24
# removed. This is the one place that restores it, before anything imports mxnet.
np.bool = bool

# MXNet gives each operator half the cores by default; use all of them unless the user set
# OMP_NUM_THREADS (2 cores, 32 px training 507 -> 931 ex/s; benchmarks/README.md).
import os  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    os.environ.setdefault("MXNET_OMP_MAX_THREADS", str(len(os.sched_getaffinity(0))))
