"""VGG in MXNet Gluon."""

import sys as _sys
import warnings

if _sys.argv[:1] == ["-m"]:  # a command starting (python -m ...): Ctrl-C while the frameworks import ends in one line
    from common.signals import guard_start

    guard_start()

import numpy as np  # noqa: E402

# MXNet 1.9.1, the last release, was written for NumPy 1.x: it uses a few names that NumPy
# removed (1.24, 2.0). This is the one place that restores them, before anything imports mxnet,
# and only where they are missing (NumPy 2 has `np.bool` again, as np.bool_: overwriting it with
# Python's bool breaks numpy.ma). What was checked and why: docs/environment.md.


def _removed(name):
    """A stand-in for a NumPy function that NumPy no longer has: importable, fails when called."""

    def removed(*args, **kwargs):
        raise NotImplementedError(f"numpy.{name} is not in NumPy {np.__version__}; MXNet only names it")

    return removed


for _name, _value in (
    ("bool", bool),  # removed in NumPy 1.24 (back in 2.0): mxnet/numpy/utils.py at import, Gluon's boolean dtypes
    ("PZERO", 0.0),  # this and the five constants below: removed in NumPy 2.0, read by mxnet/numpy/utils.py at import
    ("NZERO", -0.0),
    ("PINF", float("inf")),
    ("NINF", -float("inf")),
    ("NAN", float("nan")),
    ("NaN", float("nan")),
    ("Inf", float("inf")),  # removed in NumPy 2.0: a default argument in mxnet/gluon/contrib/estimator, at import
    (
        "alltrue",
        np.all,
    ),  # this and the three below: removed in NumPy 2.0/2.4, copied by mxnet/numpy/fallback.py at import
    ("in1d", lambda ar1, ar2, *args, **kwargs: np.isin(ar1, ar2, *args, **kwargs).ravel()),
    ("msort", lambda a: np.sort(a, axis=0)),
    ("trapz", getattr(np, "trapezoid", None)),
    ("sometrue", np.any),  # this and the two below: removed in NumPy 2.0, looked up by mxnet/numpy_dispatch_protocol.py
    ("round_", np.round),
    ("product", np.prod),
    *((_fin, None) for _fin in ("mirr", "npv", "pmt", "ppmt", "pv", "rate")),  # NEP 32 stubs (1.20-1.26), same file
):
    with warnings.catch_warnings():  # NumPy 1.26 warns when asked whether `np.bool` or `np.pv` exists
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        missing = not hasattr(np, _name)
    if missing:
        setattr(np, _name, _value if _value is not None else _removed(_name))

# MXNet gives each operator half the cores by default; use all of them unless the user set
# OMP_NUM_THREADS (2 cores, 32 px training 507 -> 931 ex/s; benchmarks/README.md).
import os  # noqa: E402

if "OMP_NUM_THREADS" not in os.environ:
    os.environ.setdefault("MXNET_OMP_MAX_THREADS", str(len(os.sched_getaffinity(0))))
